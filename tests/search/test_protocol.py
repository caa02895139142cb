"""Protocol and ProtocolSpace: ELR arithmetic, integers from fractions, centred ranges, suggest."""

from __future__ import annotations

import math

import optuna
import pytest

from autotransfer.core.protocol import ParamRange, Protocol, ProtocolSpace, freeze_depth, reinit_count


def test_lr_follows_elr_and_momentum():
    p = Protocol(log10_elr=-1.0, momentum=0.9)
    assert math.isclose(p.elr, 0.1)
    assert math.isclose(p.lr, 0.01)
    assert math.isclose(Protocol(log10_elr=-1.0, momentum=0.0).lr, 0.1)


@pytest.mark.parametrize(
    "freeze_frac, reinit_frac, groups, expected",
    [
        (0.0, 0.0, 8, (0, 0)),
        (1.0, 1.0, 8, (8, 0)),
        (0.5, 0.5, 8, (4, 2)),
        (0.25, 1.0, 5, (1, 4)),
        (0.6, 0.34, 5, (3, 1)),
    ],
)
def test_integers_from_fractions(freeze_frac, reinit_frac, groups, expected):
    f, r = Protocol(freeze_frac=freeze_frac, reinit_frac=reinit_frac).integers(groups)
    assert (f, r) == expected
    assert 0 <= f <= groups and 0 <= r <= groups - f


def test_fractions_are_validated():
    with pytest.raises(ValueError, match="freeze_frac"):
        freeze_depth(1.5, 8)
    with pytest.raises(ValueError, match="reinit_frac"):
        reinit_count(-0.1, 8, 0)
    with pytest.raises(ValueError, match="bn_mode"):
        Protocol(bn_mode="sometimes")
    with pytest.raises(ValueError, match="momentum"):
        Protocol(momentum=1.0)


def test_centred_space_is_clipped_to_bounds_and_contains_centre():
    centre = Protocol(log10_elr=-2.0, freeze_frac=0.9, head_lr_mult=10.0)
    space = ProtocolSpace.centred(centre, {"log10_elr": 0.5, "freeze_frac": 0.3, "head_lr_mult": 0.5})
    assert space.ranges["log10_elr"] == ParamRange(-2.5, -1.5)
    assert space.ranges["freeze_frac"].high == 1.0 and math.isclose(space.ranges["freeze_frac"].low, 0.6)
    assert math.isclose(space.ranges["head_lr_mult"].low, 10 / 10**0.5)
    assert space.ranges["momentum"] == ProtocolSpace().ranges["momentum"]
    assert space.clip(centre) == centre


def test_suggest_draws_inside_ranges_and_roundtrips():
    space = ProtocolSpace.centred(Protocol(), {"log10_elr": 0.3})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        p = space.suggest(trial)
        assert space.ranges["log10_elr"].low <= p.log10_elr <= space.ranges["log10_elr"].high
        assert Protocol.from_dict(trial.params) == p
        study.tell(trial, 0.0)
    assert ProtocolSpace.from_dict(space.to_dict()) == space


def test_best_transfer_trial_breaks_score_ties_on_validation_loss():
    """Small validation sets make equal scores common: the lower validation loss wins, then
    the earlier trial; from-scratch controls never count."""
    import optuna

    from autotransfer.core.schema import CONTROL_ATTR, VAL_LOSS_ATTR
    from autotransfer.search.study import best_transfer_trial

    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(value, loss=None, control=None):
        attrs = {} if loss is None else {VAL_LOSS_ATTR: loss}
        if control:
            attrs[CONTROL_ATTR] = control
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=value, user_attrs=attrs))

    add(0.9, control="scratch")  # the best score, but a from-scratch control
    add(0.8, loss=0.7)
    add(0.8, loss=0.4)  # same score, lower loss: the best
    add(0.8, loss=0.5)
    add(0.7, loss=0.1)
    assert best_transfer_trial(study).number == 2
    # without a recorded loss the earlier trial of equal score wins
    plain = optuna.create_study(direction="maximize")
    for v in (0.6, 0.6):
        plain.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=v))
    assert best_transfer_trial(plain).number == 0
