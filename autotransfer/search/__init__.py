"""The protocol search: Optuna studies of real fine-tuning trials (the sampler, the pruner, the
trial runner, storage and workers), the pick and the final model. ``pipeline.tune`` runs it; the
plain types it searches over live in ``core`` (docs/design.md, "Layers")."""
