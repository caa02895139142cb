"""The Optuna objective: one trial = one real fine-tuning run of a suggested protocol."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, cast

import optuna

from autotransfer.core.errors import AutotransferError, UserError
from autotransfer.core.protocol import Protocol, ProtocolSpace
from autotransfer.core.schema import (
    BUDGET_STOP_ATTR,
    CONTROL_ATTR,
    DEVICE_ATTR,
    DEVICE_NAME_ATTR,
    FAIL_REASON_ATTR,
    FIXED_PARAMS,
    FREEZE_ATTR,
    HISTORY_ATTR,
    KEPT_MODEL_ATTR,
    NUM_GROUPS_ATTR,
    PRECISION_ATTR,
    PRUNE_REASON_ATTR,
    REINIT_ATTR,
    RUNGS_ATTR,
    SOURCE_ATTR,
    UNFROZEN_ATTR,
    VAL_LOSS_ATTR,
)
from autotransfer.core.settings import StudySettings

if TYPE_CHECKING:
    from autotransfer.backbones.types import Backbone
    from autotransfer.data.device import DeviceBatches
    from autotransfer.search.trial_models import TrialModels
    from autotransfer.train.prefix_cache import PrefixCache

#: Set to 1 to let a worker run a study whose trials ran at another precision (``precision_refusal``).
MIXED_PRECISION_ENV = "AUTOTRANSFER_ALLOW_MIXED_PRECISION"

__all__ = [
    "TrialFailed",
    "TrialRunner",
    "train_config_for",
    "MIXED_PRECISION_ENV",
    "trial_precision",
    "study_precisions",
    "precision_refusal",
]


class TrialFailed(AutotransferError, RuntimeError):
    """A trial that failed for a recorded reason (NaN loss, out of memory): the study goes on."""


def train_config_for(protocol: Protocol, settings: StudySettings, num_groups: int, *, micro_batch: int | None = None):
    """The trial's ``TrainConfig``: the protocol's values plus the study-level settings
    (``micro_batch``: accumulate gradients over passes of that many images, after an OOM)."""
    from autotransfer.train import TrainConfig

    return TrainConfig(
        **protocol.trial_values(num_groups),
        optimizer=settings.optimizer,
        batch_size=settings.batch_size,
        micro_batch=micro_batch,
        resolution=settings.resolution,
        steps=int(cast(int, settings.steps)),  # resolved settings: filled in
        eval_every=int(cast(int, settings.eval_every)),
        views=settings.views if settings.augment else 1,
        augment=settings.augment,
        seed=settings.seed,
        device=settings.device,
    )


def trial_precision(device) -> str:
    """How a trial on ``device`` (a ``torch.device``) computes: ``bf16-autocast`` (CUDA with native
    bf16: ``train.default_amp``) or ``fp32``."""
    from autotransfer.train.config import default_amp

    return "bf16-autocast" if default_amp(device) else "fp32"


def study_precisions(study: optuna.Study, *, exclude: int | None = None) -> dict[str, set[str]]:
    """``{precision: {devices}}`` of the trials of ``study`` that ran or are running (not the
    WAITING ones, nor trial number ``exclude``). A trial recorded before ``PRECISION_ATTR``
    existed counts as ``fp32`` when it ran on the CPU, and is left out otherwise."""
    seen: dict[str, set[str]] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.WAITING or trial.number == exclude:
            continue
        device = str(trial.user_attrs.get(DEVICE_ATTR, ""))
        precision = trial.user_attrs.get(PRECISION_ATTR) or ("fp32" if device == "cpu" else None)
        if precision:
            seen.setdefault(str(precision), set()).add(device or "?")
    return seen


def precision_refusal(study: optuna.Study, precision: str, device: str, *, exclude: int | None = None) -> str | None:
    """Why trials at ``precision`` on ``device`` may not join ``study`` (one line), or ``None``.

    A study's trials are compared with each other (the pruner's rungs, the pick), and bf16
    autocast moves scores by about as much as those comparisons resolve, so a study runs at one
    precision: the first trial's. ``$AUTOTRANSFER_ALLOW_MIXED_PRECISION=1`` lifts the rule (each
    trial still records its own ``precision`` and ``device``)."""
    if os.environ.get(MIXED_PRECISION_ENV, "") == "1":
        return None
    others = {p: d for p, d in study_precisions(study, exclude=exclude).items() if p != precision}
    if not others:
        return None
    theirs = "; ".join(f"{p} on {', '.join(sorted(d))}" for p, d in sorted(others.items()))
    hint = "run it with --device cpu" if "fp32" in others else "run it on a GPU with native bf16 (--device cuda)"
    return (
        f"worker refused for study {study.study_name!r}: its trials ran at {theirs}, this worker would run"
        f" {precision} on {device}, and scores at two precisions do not compare: {hint}, or set"
        f" {MIXED_PRECISION_ENV}=1 to mix them (each trial records its precision)"
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
    make_backbone: Callable[[], Backbone]
    train: DeviceBatches
    val: DeviceBatches
    prefix_cache: PrefixCache | None = None
    on_progress: Callable[[int, int], None] | None = None
    on_trial_start: Callable[[optuna.trial.Trial, Protocol], None] | None = None
    num_groups: int = field(default=0)
    #: images per forward/backward pass after an out-of-memory (``None``: the whole batch);
    #: remembered for later trials, the pick and the final retrain
    micro_batch: int | None = None
    #: the job's time budget: called after every step, True ends the trial there (its model as
    #: trained so far is scored and kept, ``BUDGET_STOP_ATTR``)
    stop: Callable[[], bool] | None = None
    #: where the best trials' models are kept for the hand-back without a retrain
    keep: TrialModels | None = None

    def __call__(self, trial: optuna.trial.Trial) -> float:
        from autotransfer.train import DivergedError, OutOfMemory, release_memory, train_protocol, with_oom_retry

        release_memory()  # what an earlier failed or pruned trial left in reference cycles
        self._claim_precision(trial)
        control = trial.user_attrs.get(CONTROL_ATTR)
        with warnings.catch_warnings():
            # enqueued controls and survey protocols may lie outside the centred ranges
            warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
            protocol = self.space.suggest(trial)
        backbone = self.make_backbone()
        num_groups = backbone.num_groups
        freeze, reinit = protocol.integers(num_groups)
        trial.set_user_attr(FREEZE_ATTR, freeze)
        trial.set_user_attr(REINIT_ATTR, reinit)
        trial.set_user_attr("lr", protocol.lr)
        trial.set_user_attr(NUM_GROUPS_ATTR, num_groups)
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
                trial.set_user_attr(
                    PRUNE_REASON_ATTR, line or f"pruned by {type(trial.study.pruner).__name__} at step {step}"
                )
            return prune

        started = time.perf_counter()
        first = [backbone]  # the backbone built above serves the first attempt

        def attempt(micro_batch: int | None):
            model = first.pop() if first else self.make_backbone()
            config = train_config_for(protocol, self.settings, num_groups, micro_batch=micro_batch)
            return train_protocol(
                model,
                self.train,
                self.val,
                config,
                metric=self.settings.metric,
                report=report,
                progress=self.on_progress,
                cache=self.prefix_cache,
                stop=self.stop,
            )

        def shrink(micro_batch: int, error: str) -> None:
            # a retry re-runs the same protocol (accumulation keeps it), so it re-reports the same
            # steps with the same scores; the prefix cache made room for nothing, so drop it
            if self.prefix_cache is not None and hasattr(self.prefix_cache, "clear"):
                self.prefix_cache.clear()
            trial.set_user_attr("micro_batch", micro_batch)
            trial.set_user_attr("oom", error)

        del backbone
        reason: str | None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is already reported")
                result, self.micro_batch = with_oom_retry(
                    attempt, self.micro_batch, self.settings.batch_size, on_shrink=shrink
                )
        except DivergedError as err:
            reason = f"diverged: {err}"
        except OutOfMemory as err:
            reason = str(err)
        else:
            reason = None
        if reason is not None:  # outside the handler: the traceback no longer holds the model
            first.clear()
            release_memory()
            trial.set_user_attr(FAIL_REASON_ATTR, reason)
            raise TrialFailed(reason)

        trial.set_user_attr("wall_time_s", round(time.perf_counter() - started, 3))
        trial.set_user_attr("images_per_s", round(float(result.images_per_s), 1))
        trial.set_user_attr("peak_memory_mb", round(result.peak_memory_bytes / 2**20, 1))
        trial.set_user_attr(DEVICE_ATTR, result.device)
        trial.set_user_attr("prefix_cached", bool(result.cached))
        trial.set_user_attr(HISTORY_ATTR, [[int(s), float(v)] for s, v in result.history])
        if result.unfrozen:
            trial.set_user_attr(UNFROZEN_ATTR, [[int(s), int(g)] for s, g in result.unfrozen])
        if result.final_val_loss is not None and math.isfinite(result.final_val_loss):
            trial.set_user_attr(VAL_LOSS_ATTR, round(float(result.final_val_loss), 6))
        stopped_early, history, value = (
            result.stopped_early and not result.budget_stopped,
            result.history,
            (math.nan if result.final_score is None else float(result.final_score)),
        )
        if result.budget_stopped:
            # the job's time ran out mid-trial: the model as it stands is scored and usable
            trial.set_user_attr(BUDGET_STOP_ATTR, int(result.steps_done))
        if self.keep is not None and not stopped_early and math.isfinite(value):
            from autotransfer.search.trial_models import settled_of_history

            if self.keep.offer(trial.number, settled_of_history(history), result.model):
                trial.set_user_attr(KEPT_MODEL_ATTR, True)
        del result  # the trained model goes with it: nothing of this trial outlives the call
        release_memory()
        if stopped_early:
            raise optuna.TrialPruned(f"pruned at step {history[-1][0] if history else 0}")
        if not math.isfinite(value):
            trial.set_user_attr(FAIL_REASON_ATTR, f"non-finite score {value!r}")
            raise TrialFailed(f"non-finite score {value!r}")
        return value

    def _claim_precision(self, trial: optuna.trial.Trial) -> None:
        """Record the trial's device and precision, then refuse (``UserError``) when the study's
        other trials ran at another precision (``precision_refusal``); an enqueued trial refused
        here is queued again, so no control or candidate is lost. Recording first means two
        workers starting at once at two precisions cannot both pass."""
        from autotransfer.train.config import resolve_device

        device = resolve_device(self.settings.device)
        precision = trial_precision(device)
        trial.set_user_attr(DEVICE_ATTR, str(device))
        trial.set_user_attr(PRECISION_ATTR, precision)
        if device.type == "cuda":
            import torch

            trial.set_user_attr(DEVICE_NAME_ATTR, torch.cuda.get_device_name(device))
        refusal = precision_refusal(trial.study, precision, str(device), exclude=trial.number)
        if refusal is None:
            return
        from autotransfer.search.storage import requeue_trial

        frozen = trial.storage.get_trial(trial._trial_id)
        if FIXED_PARAMS in frozen.system_attrs:
            requeue_trial(trial.study, frozen, max_retry=None)
        trial.set_user_attr(FAIL_REASON_ATTR, refusal)
        raise UserError(refusal)


def _rung_line(trial: optuna.trial.Trial) -> str | None:
    """The pruner's account of its last decision on ``trial`` (``NoiseAwarePruner``), if any."""
    reasons = getattr(trial.study.pruner, "reasons", None)
    return reasons.pop(trial.number, None) if isinstance(reasons, dict) else None
