"""How long one full training takes on this device, measured before the search so a time budget
can be planned (``pipeline.plan``): a few optimizer steps of a fully trainable model, timed from
the end of the first (which builds the kernels and the data path), scaled to the study's budget."""

from __future__ import annotations

import time

from autotransfer.train.config import TrainConfig
from autotransfer.train.loop import train_protocol

__all__ = ["time_training", "step_seconds", "PROBE_STEPS", "EVAL_COST"]

#: Optimizer steps run; the first is a warm-up, the others are timed.
PROBE_STEPS = 4
#: A validation image's cost against a training image's: a forward pass without the backward
#: (about a third of a training step's work per image).
EVAL_COST = 1 / 3


def time_training(make_backbone, train, val, config: TrainConfig, *, metric: str = "accuracy") -> float:
    """Seconds one full training of ``config.steps`` steps with every group trainable takes,
    validating every ``config.eval_every`` steps on ``val`` (``DeviceBatches``; ``None``: none).

    Cost: ``PROBE_STEPS`` optimizer steps on one fresh backbone from ``make_backbone``, no
    validation pass (its cost is scaled from the training steps' images per second). Trials that
    freeze a prefix or train only the head run faster than this."""
    steps = max(1, int(config.steps))
    step_s = step_seconds(make_backbone(), train, config, metric=metric)
    evals = steps // max(1, int(config.eval_every or steps)) if val is not None else 0
    eval_s = evals * len(val) * EVAL_COST * step_s / config.batch_size if evals else 0.0
    return step_s * steps + eval_s


def step_seconds(backbone, train, config: TrainConfig, *, steps: int = PROBE_STEPS, metric: str = "accuracy") -> float:
    """Seconds of one optimizer step (forward + backward + update of ``config.batch_size`` images,
    every group trainable) of ``backbone`` on the ``train`` ``DeviceBatches``: ``steps`` steps are
    run (the model is trained in place), the first is a warm-up, the mean of the others returned."""
    stamps: list[float] = []
    probe = config.replace(
        freeze=0, reinit=0, schedule="one-stage", steps=max(2, int(steps)), eval_every=max(2, int(steps))
    )
    train_protocol(
        backbone,
        train,
        None,
        probe,
        metric=metric,
        progress=lambda step, total: stamps.append(time.perf_counter()),
    )
    return max(1e-6, (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1))
