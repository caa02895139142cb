"""autotransfer: automated transfer-learning protocol search for image classification.

The handful of names a Python user needs:

- ``tune("builtin:animals", n=200, out="studies", time_budget="10m", progress=True)``: the main
  job as ``autotransfer tune`` runs it, with the same defaults (estimate, prior, Optuna study,
  pick, final model); returns a ``TuneResult`` whose ``model_path`` is the handed-back model
  folder and whose ``ledger`` says what it cost; ``tune(StudySettings(...))`` runs given settings;
- ``estimate_task(target, model)``: measure a task and show the priors ``tune`` would start from
  (not ``estimate``: that name is the ``autotransfer.estimate`` package, and importing it would
  replace a function of the same name here);
- ``load_model(folder)``: a handed-back model folder (or the ``.onnx`` file ``export-model``
  wrote from one) as a predictor (``predict``, ``predict_proba``, ``classes_``);
  ``evaluate_model(folder, target)`` scores it;
- ``StudySettings`` and ``Protocol``: the job's settings and one fine-tuning recipe;
- ``AutotransferError``: the root of every error the package raises (``UserError``: bad input).

docs/design.md describes the layers below these.
"""

from __future__ import annotations

from typing import Any

from autotransfer.core.errors import AutotransferError, UserError
from autotransfer.core.protocol import Protocol
from autotransfer.core.settings import StudySettings
from autotransfer.core.version import __version__

__all__ = [
    "tune",
    "estimate_task",
    "load_model",
    "evaluate_model",
    "StudySettings",
    "Protocol",
    "AutotransferError",
    "UserError",
    "__version__",
]

#: The public functions that need torch, and where they live. They load on first use, so that
#: ``import autotransfer`` and ``autotransfer --help`` stay fast (PEP 562).
_LAZY = {
    "tune": ("autotransfer.pipeline.tune_job", "tune_job"),
    "estimate_task": ("autotransfer.pipeline.estimate", "estimate_task"),
    "load_model": ("autotransfer.handback.predict", "load_model"),
    "evaluate_model": ("autotransfer.handback.evaluate", "evaluate_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
