"""TrainConfig validation, JSON round-trip and the lr schedule."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from autotransfer.core.errors import UserError
from autotransfer.train import TrainConfig, lr_lambda


def test_asdict_is_json_and_round_trips():
    config = TrainConfig(lr=0.03, freeze=3, reinit=1, l2sp=0.01, optimizer="adamw", amp=None)
    text = json.dumps(asdict(config))
    assert TrainConfig.from_dict(json.loads(text)) == config


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", 0.0),
        ("lr", float("nan")),
        ("momentum", 1.0),
        ("bn_mode", "train"),
        ("optimizer", "adam"),
        ("steps", 0),
        ("batch_size", 2.5),
        ("freeze", -1),
        ("device", "tpu"),
        ("layer_decay", 1.5),
        ("amp", "yes"),
    ],
)
def test_bad_values_name_field_and_value(field, value):
    with pytest.raises(UserError) as err:
        TrainConfig(**{field: value})
    assert field in str(err.value) and repr(value) in str(err.value)


def test_freeze_and_reinit_are_checked_against_groups():
    TrainConfig(freeze=8).validate(8)
    with pytest.raises(UserError, match="freeze.*9"):
        TrainConfig(freeze=9).validate(8)
    with pytest.raises(UserError, match=r"reinit.*\[0, 2\].*3"):
        TrainConfig(freeze=6, reinit=3).validate(8)


def test_unknown_field_is_named():
    with pytest.raises(UserError, match="epochs"):
        TrainConfig.from_dict({"epochs": 3})


def test_schedule_warmup_then_cosine_to_zero():
    factor = lr_lambda(100, 0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    plain = lr_lambda(10, 0.0)
    assert plain(0) == 1.0 and plain(5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
