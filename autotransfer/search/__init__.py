"""The protocol search: Optuna studies of real fine-tuning trials (the sampler, the pruner, the
trial runner, storage, workers and the trials' kept models). ``pipeline.tune`` runs it; the
plain types it searches over live in ``core`` (docs/design.md, "Layers")."""
