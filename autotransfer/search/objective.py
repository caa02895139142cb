"""The Optuna objective: one trial = one real fine-tuning run of a suggested protocol."""
from __future__ import annotations

import gc
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import optuna
import torch

from autotransfer.search.protocol import Protocol, ProtocolSpace
from autotransfer.search.settings import StudySettings
from autotransfer.search.study import CONTROL_ATTR, SOURCE_ATTR, VAL_LOSS_ATTR

#: Trial attribute: the pruner's one-line account of why the trial was pruned.
PRUNE_REASON_ATTR = "prune_reason"
#: Trial attribute: the pruner's line at each rung the trial reached (kept or pruned).
RUNGS_ATTR = "rungs"

__all__ = ["TrialFailed", "TrialRunner", "train_config_for", "PRUNE_REASON_ATTR", "RUNGS_ATTR"]


class TrialFailed(RuntimeError):
    """A trial that failed for a recorded reason (NaN loss, out of memory): the study goes on."""


def train_config_for(protocol: Protocol, settings: StudySettings, num_groups: int, *, batch_size: int | None = None):
    """The trial's ``TrainConfig``: the protocol's values plus the study-level settings."""
    from autotransfer.train import TrainConfig

    freeze, reinit = protocol.integers(num_groups)
    return TrainConfig(
        lr=protocol.lr,
        momentum=protocol.momentum,
        head_lr_mult=protocol.head_lr_mult,
        freeze=freeze,
        reinit=reinit,
        layer_decay=protocol.layer_decay,
        weight_decay=protocol.weight_decay,
        bn_mode=protocol.bn_mode,
        l2sp=protocol.l2sp,
        optimizer=settings.optimizer,
        batch_size=batch_size or settings.batch_size,
        resolution=settings.resolution,
        steps=int(settings.steps),
        eval_every=int(settings.eval_every),
        views=settings.views if settings.augment else 1,
        augment=settings.augment,
        seed=settings.seed,
        device=settings.device,
    )


@dataclass
class TrialRunner:
    """Callable objective over prepared, device-resident data.

    Attributes:
        settings: the study's settings (budget, resolution, metric...).
        space: the study's protocol space.
        make_backbone: builds a fresh backbone (pretrained weights, new head) per trial.
        train, val: ``DeviceBatches`` of the training and validation splits.
        prefix_cache: kept alive across trials so protocols with the same freeze depth reuse
            the frozen prefix's outputs.
        on_progress: called with ``(step, total_steps)`` during a trial (progress bars).
    """

    settings: StudySettings
    space: ProtocolSpace
    make_backbone: Callable[[], object]
    train: object
    val: object
    prefix_cache: object | None = None
    on_progress: Callable[[int, int], None] | None = None
    on_trial_start: Callable[[optuna.trial.Trial, Protocol], None] | None = None
    num_groups: int = field(default=0)

    def __call__(self, trial: optuna.trial.Trial) -> float:
        from autotransfer.train import DivergedError, train_protocol

        control = trial.user_attrs.get(CONTROL_ATTR)
        with warnings.catch_warnings():
            # enqueued controls and survey protocols may lie outside the centred ranges
            warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
            protocol = self.space.suggest(trial)
        backbone = self.make_backbone()
        num_groups = backbone.num_groups
        freeze, reinit = protocol.integers(num_groups)
        trial.set_user_attr("freeze", freeze)
        trial.set_user_attr("reinit", reinit)
        trial.set_user_attr("lr", protocol.lr)
        trial.set_user_attr("num_groups", num_groups)
        if self.on_trial_start:
            self.on_trial_start(trial, protocol)

        # Controls are never pruned. Enqueued candidates (the prior's centre and neighbours, the
        # survey's protocols, a linear probe, warm-start optima) run to the full budget too: they are
        # a few deliberate guesses, and a protocol that re-initialises layers or uses a low rate
        # starts slowly, so an early rung would discard what the prior knows. They still take their
        # place on the pruner's rungs, so sampled trials are measured against them.
        prune_enabled = self.settings.prune and control is None
        candidate = SOURCE_ATTR in trial.user_attrs

        decisions: list[str] = []

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            if not prune_enabled or candidate:
                return False
            prune = trial.should_prune()
            line = _rung_line(trial)
            if line:
                decisions.append(line)
                trial.set_user_attr(RUNGS_ATTR, decisions)
            if prune:
                trial.set_user_attr(PRUNE_REASON_ATTR, line or f"pruned by {type(trial.study.pruner).__name__} at step {step}")
            return prune

        batch_size = self.settings.batch_size
        started = time.perf_counter()
        while True:
            config = train_config_for(protocol, self.settings, num_groups, batch_size=batch_size)
            try:
                result = train_protocol(
                    backbone,
                    self.train,
                    self.val,
                    config,
                    metric=self.settings.metric,
                    report=report,
                    progress=self.on_progress,
                    cache=self.prefix_cache,
                )
                break
            except DivergedError as err:
                reason = f"diverged: {err}"
                trial.set_user_attr("fail_reason", reason)
                raise TrialFailed(reason) from err
            except torch.OutOfMemoryError as err:
                if self.prefix_cache is not None and hasattr(self.prefix_cache, "clear"):
                    self.prefix_cache.clear()
                _release_memory()
                if batch_size > 1 and not trial.user_attrs.get("oom_retried"):
                    batch_size //= 2
                    trial.set_user_attr("oom_retried", True)
                    trial.set_user_attr("batch_size", batch_size)
                    backbone = self.make_backbone()
                    continue
                reason = f"out of memory at batch size {batch_size}: {str(err).splitlines()[0][:160]}"
                trial.set_user_attr("fail_reason", reason)
                raise TrialFailed(reason) from err

        trial.set_user_attr("wall_time_s", round(time.perf_counter() - started, 3))
        trial.set_user_attr("images_per_s", round(float(result.images_per_s), 1))
        trial.set_user_attr("peak_memory_mb", round(result.peak_memory_bytes / 2**20, 1))
        trial.set_user_attr("device", result.device)
        trial.set_user_attr("prefix_cached", bool(result.cached))
        trial.set_user_attr("history", [[int(s), float(v)] for s, v in result.history])
        if result.final_val_loss is not None and math.isfinite(result.final_val_loss):
            trial.set_user_attr(VAL_LOSS_ATTR, round(float(result.final_val_loss), 6))
        del backbone
        _release_memory()
        if result.stopped_early:
            raise optuna.TrialPruned(f"pruned at step {result.history[-1][0] if result.history else 0}")
        value = float(result.final_score)
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"non-finite score {value!r}")
            raise TrialFailed(f"non-finite score {value!r}")
        return value


def _rung_line(trial: optuna.trial.Trial) -> str | None:
    """The pruner's account of its last decision on ``trial`` (``NoiseAwarePruner``), if any."""
    reasons = getattr(trial.study.pruner, "reasons", None)
    return reasons.pop(trial.number, None) if isinstance(reasons, dict) else None


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
