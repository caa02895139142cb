"""The sampler and the searched space: start-up draws count only sampled trials and centre on the
prior; the wide space reaches every protocol the survey, the controls and a plain grid consider."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from autotransfer.core.protocol import SEARCHED, Protocol, ProtocolSpace
from autotransfer.prior import (
    less_similar_protocol,
    linear_probe_protocol,
    probe_control_protocols,
    quadrant_prior,
    recommended_protocol,
    scratch_protocols,
)
from autotransfer.prior.quadrant import WIDTHS
from autotransfer.search.sampler import PriorSampler, default_startup, is_sampled


def _contains(space: ProtocolSpace, protocol: Protocol) -> bool:
    for name in SEARCHED:
        value = getattr(protocol, name)
        if name == "bn_mode":
            if value not in space.bn_modes:
                return False
        elif name == "schedule":
            if value not in space.schedules:
                return False
        elif not space.ranges[name].low - 1e-12 <= value <= space.ranges[name].high + 1e-12:
            return False
    return True


@pytest.mark.parametrize("log10_n,similarity", [(2.0, 0.1), (2.3, 0.5), (3.0, 0.9), (4.0, 0.3)])
def test_the_prior_space_reaches_every_protocol_the_survey_and_controls_consider(log10_n, similarity):
    G = 8
    prior = quadrant_prior(log10_n, similarity, None, G, num_classes=10, transferability=0.5)
    fixed = [
        recommended_protocol(),
        less_similar_protocol(G),
        linear_probe_protocol(),
        *scratch_protocols(),
        *probe_control_protocols(),
    ]
    assert all(_contains(prior.space, p) for p in fixed)
    ranges = prior.space.ranges
    # freeze depth 0..G, re-init 0..all, BN both ways, ELR over two decades either side of the centre
    assert ranges["freeze_frac"].low == 0.0 and ranges["freeze_frac"].high == 1.0
    assert ranges["reinit_frac"].low == 0.0 and ranges["reinit_frac"].high == 1.0
    assert set(prior.space.bn_modes) == {"adapt", "frozen"}
    c = prior.centre.log10_elr
    assert (
        ranges["log10_elr"].high - ranges["log10_elr"].low >= 2.0
        and ranges["log10_elr"].low <= c - 1
        and ranges["log10_elr"].high >= c + 0.5
    )
    # a plain 12-protocol grid (lr x freeze x reinit) lies inside too
    for lr in (0.003, 0.01, 0.03):
        for f in (0.0, 0.5, 1.0):
            for r in (0.0, 0.25):
                assert _contains(prior.space, Protocol(log10_elr=math.log10(lr / 0.1), freeze_frac=f, reinit_frac=r))


def _drive(sampler: PriorSampler, enqueued: list[dict], sampled: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in enqueued:
        study.enqueue_trial(params)
    space = ProtocolSpace()
    for _ in range(len(enqueued) + sampled):
        trial = study.ask()
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = space.suggest(trial)
        study.tell(trial, p.freeze_frac)  # any objective: the start-up ignores it
    return study


def test_startup_draws_count_only_sampled_trials_and_centre_on_the_prior():
    centre = Protocol(freeze_frac=0.2, log10_elr=-1.5, bn_mode="frozen").to_dict()
    enqueued = [linear_probe_protocol().to_dict()] * 6  # like the controls and candidates of a new study
    sampler = PriorSampler(0, startup=40, centre=centre, spread=WIDTHS)
    study = _drive(sampler, enqueued, 40)
    draws = [t for t in study.trials if is_sampled(t)]
    assert len(draws) == 40 and all(not is_sampled(t) for t in study.trials[:6])
    freeze = np.array([t.params["freeze_frac"] for t in draws])
    elr = np.array([t.params["log10_elr"] for t in draws])
    # centred on the prior, yet reaching deep freezing: the spread explores, the range does not fence
    assert freeze.max() > 0.6
    deep = _drive(PriorSampler(0, startup=40, centre={**centre, "freeze_frac": 0.8}, spread=WIDTHS), enqueued, 40)
    deep_freeze = np.array([t.params["freeze_frac"] for t in deep.trials if is_sampled(t)])
    assert np.median(deep_freeze) - np.median(freeze) > 0.2  # the draws follow the centre (expected 0.35)
    assert abs(np.median(elr) + 1.5) < 0.4 and elr.max() - elr.min() > 2.0
    # BN mode is not inherited from the enqueued trials (all frozen): both modes are drawn
    modes = [t.params["bn_mode"] for t in draws]
    assert 10 <= modes.count("adapt") <= 30


def test_after_startup_tpe_takes_over_and_seeds_repeat():
    a = _drive(PriorSampler(3, startup=4), [], 8)
    b = _drive(PriorSampler(3, startup=4), [], 8)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    sampler = PriorSampler(3, startup=4)
    assert not sampler.in_startup(a, a.trials[5]) and sampler.in_startup(a, a.trials[3])


def test_default_startup_follows_the_budget():
    assert default_startup(20, 6) == 7
    assert default_startup(7, 4) == 4
    assert default_startup(60, 6) == 10
