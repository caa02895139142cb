"""``core.knobs`` is the one declaration: Protocol, TrainConfig, the search space, the exports and
the checks agree with it, one device rule holds everywhere, and a bad value reads the same from
every entry point."""

from __future__ import annotations

import re
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.core.knobs import (
    BN_MODES,
    KNOBS,
    OPTIMIZER,
    PROTOCOL_KNOBS,
    SCHEDULES,
    TRIAL_KNOBS,
    KnobValueError,
    check_device,
    knob_table,
)
from autotransfer.core.protocol import SEARCHED, Protocol, ProtocolSpace
from autotransfer.core.settings import StudySettings
from autotransfer.train.config import TrainConfig, resolve_device
from autotransfer.train.schedule import join_steps

PYTHON_TYPE = {"float": float, "int": int, "choice": str}


def _declared(cls: type) -> dict[str, tuple[typing.Any, typing.Any]]:
    """``{field: (type, default)}`` of a dataclass, its annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in fields(cls) if f.default is not MISSING}


def test_protocol_fields_are_the_protocol_knobs_in_order():
    declared = _declared(Protocol)
    assert list(declared) == [k.name for k in PROTOCOL_KNOBS] == list(SEARCHED)
    for knob in PROTOCOL_KNOBS:
        assert declared[knob.name] == (PYTHON_TYPE[knob.kind], knob.default), knob.name


def test_train_config_holds_every_trial_knob_with_its_type_and_default():
    declared = _declared(TrainConfig)
    for knob in TRIAL_KNOBS:
        assert declared[knob.name] == (PYTHON_TYPE[knob.kind], knob.default), knob.name
    assert declared["optimizer"] == (str, OPTIMIZER.default) and StudySettings().optimizer == OPTIMIZER.default
    # the trial knobs are what a protocol becomes: a TrainConfig takes them as they are
    values = Protocol(freeze_frac=0.5, reinit_frac=0.5, schedule="lp-ft").trial_values(8)
    assert list(values) == [k.name for k in TRIAL_KNOBS]
    config = TrainConfig(**values)
    assert {k: getattr(config, k) for k in values} == values and (config.freeze, config.reinit) == (4, 2)


def test_every_default_and_search_range_is_valid_for_its_knob():
    for knob in KNOBS.values():
        assert knob.check(knob.default) == knob.default
        if knob.search is not None:
            low, high, log = knob.search
            knob.check(low), knob.check(high)
            assert not log or low > 0


def test_the_search_space_is_the_declared_one():
    space = ProtocolSpace()
    searched = {k.name: k.search for k in PROTOCOL_KNOBS if k.search is not None}
    assert {n: (r.low, r.high, r.log) for n, r in space.ranges.items()} == searched
    assert space.bn_modes == BN_MODES == KNOBS["bn_mode"].choices
    assert space.schedules == SCHEDULES == KNOBS["schedule"].choices
    choices = {k.name for k in PROTOCOL_KNOBS if k.kind == "choice"}
    assert choices | set(searched) == set(SEARCHED)


def test_the_exports_name_the_trial_knobs():
    from autotransfer.handback import script_template
    from autotransfer.handback.export import TIMM_TRAIN_KEYS
    from autotransfer.handback.script import _member_repr

    names = [k.name for k in TRIAL_KNOBS]
    member = {"trial": 3, "trained_on": "train+val", **Protocol().trial_values(8)}
    assert re.findall(r"(\w+)=", _member_repr(member)) == ["trial", *names]
    # the standalone script reads every trial knob of its MEMBERS, and nothing else
    body = Path(script_template.__file__).read_text()
    assert set(re.findall(r'\bp\["(\w+)"\]', body)) == set(names)
    assert {k.timm for k in TRIAL_KNOBS if k.timm} <= TIMM_TRAIN_KEYS


GOOD_DEVICES = ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12"]
BAD_DEVICES = ["tpu", "mps", "CUDA", "cuda:", "cuda:x", "cuda1", "cuda:-1", " cpu", "", None, 0]


@pytest.mark.parametrize("device", GOOD_DEVICES)
def test_a_device_form_is_taken_by_train_config_and_resolve_device_alike(device):
    assert TrainConfig(device=device).device == device and StudySettings(device=device).device == device
    try:
        resolved = resolve_device(device)
    except UserError as err:  # the form is right; only the GPU is missing
        assert "no CUDA GPU is available" in str(err) and device.startswith("cuda")
    else:
        assert device == "auto" or resolved == torch.device(device)


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_bad_device_is_the_same_one_line_error_everywhere(device):
    from autotransfer.search.workers import plan_workers

    messages = set()
    for call in (lambda: TrainConfig(device=device), lambda: resolve_device(device), lambda: check_device(device)):
        with pytest.raises(UserError) as err:
            call()
        messages.add(str(err.value))
    assert messages == {f"device must be auto, cpu, cuda or cuda:N, but got {device!r}"}
    for call in (lambda: StudySettings(device=device), lambda: plan_workers(1, device=device)):
        with pytest.raises(
            UserError, match=re.escape(f"--device must be auto, cpu, cuda or cuda:N, but got {device!r}")
        ):
            call()


BAD_VALUES = [
    ("momentum", 1.0, "momentum must be in [0, 1), but got 1.0"),
    ("head_lr_mult", 0.0, "head_lr_mult must be > 0, but got 0.0"),
    ("layer_decay", 1.5, "layer_decay must be in (0, 1], but got 1.5"),
    ("weight_decay", -1e-4, "weight_decay must be >= 0, but got -0.0001"),
    ("l2sp", float("nan"), "l2sp must be a finite number, but got nan"),
    ("bn_mode", "sometimes", "bn_mode must be one of ['adapt', 'frozen'], but got 'sometimes'"),
    ("schedule", "lpft", "schedule must be one of ['one-stage', 'lp-ft', 'gradual'], but got 'lpft'"),
    ("stage_frac", 1.0, "stage_frac must be in [0, 1), but got 1.0"),
]


@pytest.mark.parametrize("name, value, message", BAD_VALUES)
def test_a_bad_knob_value_is_the_same_one_line_error_from_each_entry_point(name, value, message):
    calls = [
        lambda: Protocol(**{name: value}),
        lambda: Protocol.from_dict({name: value}),
        lambda: TrainConfig(**{name: value}),
        lambda: KNOBS[name].check(value),
    ]
    if name in ("schedule", "stage_frac"):
        calls.append(
            lambda: join_steps(
                10, **{"schedule": "lp-ft", "stage_frac": 0.3, name: value}, freeze=0, reinit=0, num_groups=3
            )
        )
    for call in calls:
        with pytest.raises(KnobValueError) as err:
            call()
        assert str(err.value) == message
        assert isinstance(err.value, UserError) and isinstance(err.value, InvalidValueError)


def test_fractions_and_trial_integers_use_the_declared_checks():
    from autotransfer.core.protocol import freeze_depth, reinit_count

    with pytest.raises(KnobValueError, match=re.escape("freeze_frac must be in [0, 1], but got 1.5")):
        freeze_depth(1.5, 8)
    with pytest.raises(KnobValueError, match=re.escape("reinit_frac must be in [0, 1], but got -0.1")):
        reinit_count(-0.1, 8, 0)
    with pytest.raises(KnobValueError, match=re.escape("freeze must be an integer >= 0, but got -1")):
        TrainConfig(freeze=-1)
    with pytest.raises(KnobValueError, match=re.escape("optimizer must be one of ['sgd', 'adamw'], but got 'adam'")):
        TrainConfig(optimizer="adam")
    with pytest.raises(KnobValueError, match=re.escape("--optimizer must be one of ['sgd', 'adamw'], but got 'adam'")):
        StudySettings(optimizer="adam")


def test_the_docs_table_is_the_declaration():
    design = Path(__file__).resolve().parents[2] / "docs" / "design.md"
    assert knob_table() in design.read_text()
