"""How long one full training takes on this device, measured before the search so a time budget
can be planned (``pipeline.plan``): a few optimizer steps of a fully trainable model, timed after a
warm-up step, scaled to the study's budget."""

from __future__ import annotations

import time

from autotransfer.train.config import TrainConfig
from autotransfer.train.loop import train_protocol

__all__ = ["time_training", "PROBE_STEPS"]

#: Optimizer steps timed (after one warm-up run of 1 step that builds the kernels and the data path).
PROBE_STEPS = 4


def time_training(make_backbone, train, val, config: TrainConfig, *, metric: str = "accuracy") -> float:
    """Seconds one full training of ``config.steps`` steps with every group trainable takes, with
    ``config.steps // config.eval_every`` validations on ``val`` (``DeviceBatches``; ``None``: none).

    Cost: ``PROBE_STEPS + 1`` optimizer steps and one validation pass, on fresh backbones from
    ``make_backbone``. Trials that freeze a prefix or train only the head run faster than this."""
    steps = max(1, int(config.steps))
    probe = config.replace(freeze=0, reinit=0, schedule="one-stage", steps=1, eval_every=1)
    train_protocol(make_backbone(), train, None, probe, metric=metric)  # warm-up: kernels, allocator
    timed = config.replace(freeze=0, reinit=0, schedule="one-stage", steps=PROBE_STEPS, eval_every=PROBE_STEPS)
    backbone = make_backbone()
    t0 = time.perf_counter()
    result = train_protocol(backbone, train, val, timed, metric=metric)
    wall = time.perf_counter() - t0
    eval_s = result.eval_time_s
    step_s = max(1e-6, (wall - eval_s) / PROBE_STEPS)
    evals = max(1, steps // max(1, int(config.eval_every or steps))) if val is not None else 0
    return step_s * steps + eval_s * evals
