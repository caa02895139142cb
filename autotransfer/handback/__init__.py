"""The hand-back: what a finished study gives its user. The pick, the final retrain (or the trials'
own models), self-training, the model folder and its card, ``load_model`` / predict, evaluation,
the export formats (YAML, JSON, timm args, a standalone script) and the model as one ONNX graph. ``pipeline.tune`` runs it; the
study it reads is ``search``'s (docs/design.md, "Layers")."""
