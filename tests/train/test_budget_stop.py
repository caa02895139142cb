"""The job's time budget inside a run: ``train_protocol(stop=...)`` ends a trial mid-run with a usable,
scored model, and ``time_training`` measures one full training for the plan."""

from __future__ import annotations

import math

import torch

from autotransfer.train import TrainConfig, train_protocol
from autotransfer.train.timing import time_training

from .conftest import lite0


def test_stop_ends_the_run_with_the_model_validated_where_it_stood(small_batches):
    train, val = small_batches
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3  # the budget runs out after step 3

    config = TrainConfig(lr=0.02, steps=10, eval_every=4, batch_size=16, resolution=32, views=1)
    result = train_protocol(lite0(), train, val, config, stop=stop)
    assert result.budget_stopped and result.stopped_early
    assert result.steps_done == 3
    assert [s for s, _ in result.history] == [3]  # validated at the step it stopped, not at 4
    assert result.final_score is not None and result.final_score == result.history[-1][1]
    # the model is usable: it predicts on its own
    with torch.no_grad():
        out = result.model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_no_stop_runs_the_whole_budget(small_batches):
    train, val = small_batches
    config = TrainConfig(lr=0.02, steps=4, eval_every=2, batch_size=16, resolution=32, views=1)
    result = train_protocol(lite0(), train, val, config, stop=lambda: False)
    assert not result.budget_stopped and result.steps_done == 4 and [s for s, _ in result.history] == [2, 4]


def test_time_training_is_a_positive_number_of_seconds_for_the_budget(small_batches):
    train, val = small_batches
    config = TrainConfig(lr=0.02, freeze=3, reinit=1, steps=40, eval_every=10, batch_size=16, resolution=32)
    seconds = time_training(lite0, train, val, config)
    assert math.isfinite(seconds) and seconds > 0
