"""autotransfer: automated transfer-learning protocol search for image classification."""
from __future__ import annotations

from autotransfer.core.errors import AutotransferError, UserError
from autotransfer.core.version import __version__

__all__ = ["AutotransferError", "UserError", "__version__", "load_model", "evaluate_model"]


def __getattr__(name: str):
    # torch loads on first use, so `import autotransfer` and `autotransfer --help` stay quick
    if name == "load_model":
        from autotransfer.predict import load_model

        return load_model
    if name == "evaluate_model":
        from autotransfer.evaluation import evaluate_model

        return evaluate_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
