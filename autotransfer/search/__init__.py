"""The protocol search: protocols and spaces, Optuna studies of real trials, ``tune``."""
from __future__ import annotations

from autotransfer.core.protocol import ParamRange, Protocol, ProtocolSpace
from autotransfer.core.settings import StudySettings, default_steps

__all__ = ["Protocol", "ProtocolSpace", "ParamRange", "StudySettings", "default_steps", "tune", "TuneResult"]


def __getattr__(name: str):
    # ``tune`` pulls in torch and optuna: import it on first use.
    if name in ("tune", "TuneResult"):
        from autotransfer.search import job as _tune

        return getattr(_tune, name)
    raise AttributeError(name)
