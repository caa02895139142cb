"""autotransfer.train: the fine-tuning trial loop (no optuna), frozen-prefix caching, evaluation."""

from __future__ import annotations

from autotransfer.train.config import TrainConfig, resolve_device
from autotransfer.train.distill import SoftTargets
from autotransfer.train.loop import DivergedError, TrainResult, lr_lambda, train_protocol
from autotransfer.train.memory import OOM_ERRORS, OutOfMemory, release_memory, with_oom_retry
from autotransfer.train.metrics import METRICS, evaluate, predict_labels, predict_proba, score, score_interval
from autotransfer.train.prefix_cache import CachedPrefix, PrefixCache

__all__ = [
    "TrainConfig",
    "SoftTargets",
    "TrainResult",
    "DivergedError",
    "train_protocol",
    "evaluate",
    "predict_labels",
    "predict_proba",
    "score_interval",
    "score",
    "METRICS",
    "PrefixCache",
    "CachedPrefix",
    "lr_lambda",
    "OOM_ERRORS",
    "OutOfMemory",
    "release_memory",
    "with_oom_retry",
    "resolve_device",
]
