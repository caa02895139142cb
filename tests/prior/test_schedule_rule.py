"""The prior's schedule rule: one stage for large targets, LP-FT for small similar ones, gradual
unfreezing for small dissimilar ones; a study's ``--schedules`` bounds the centre and the space."""

from __future__ import annotations

import json
import math

from autotransfer.core.protocol import SCHEDULES
from autotransfer.prior import quadrant_prior, with_schedules
from autotransfer.prior.none import wide_prior
from autotransfer.prior.quadrant import GRADUAL_STAGE, LPFT_STAGE, Prior, schedule_rule

G = 8


def _prior(n: int, s: float) -> Prior:
    return quadrant_prior(math.log10(n), s, None, G, num_classes=10)


def test_rule_by_size_and_similarity():
    assert schedule_rule(0.9, 0.9, 5)[:2] == ("one-stage", LPFT_STAGE)  # large
    assert schedule_rule(0.1, 0.9, 5)[:2] == ("lp-ft", LPFT_STAGE)  # small, similar
    assert schedule_rule(0.1, 0.2, 5)[:2] == ("gradual", GRADUAL_STAGE)  # small, dissimilar
    assert schedule_rule(0.1, 0.9, 0)[0] == "one-stage"  # no pretrained group trains
    for line in (schedule_rule(0.1, 0.9, 5)[2], schedule_rule(0.1, 0.2, 5)[2]):
        assert line.startswith("schedule ")
    assert "Kumar et al., ICLR 2022" in schedule_rule(0.1, 0.9, 5)[2]
    assert "Howard & Ruder, ACL 2018" in schedule_rule(0.1, 0.2, 5)[2]


def test_quadrant_centre_carries_the_rule_and_its_rationale():
    small_far, large = _prior(200, 0.2), _prior(100_000, 0.9)
    f, r = small_far.integers()
    assert G - r - f > 0 and small_far.centre.schedule == "gradual"
    assert small_far.centre.stage_frac == GRADUAL_STAGE
    assert large.centre.schedule == "one-stage"
    assert any(line.startswith("schedule gradual") for line in small_far.rationale)
    assert small_far.space.schedules == SCHEDULES
    # a small similar target whose centre still trains a pretrained group: LP-FT
    similar = quadrant_prior(math.log10(200), 0.9, [1.0] * G, G, num_classes=10)  # excess crosses at once: f = 0
    assert similar.integers()[0] < G and similar.centre.schedule == "lp-ft"
    assert Prior.from_dict(json.loads(json.dumps(similar.to_dict()))).centre == similar.centre


def test_with_schedules_bounds_centre_candidates_and_space():
    prior = _prior(200, 0.2)
    prior.candidates.append(("surface:x", prior.centre))
    one = with_schedules(prior, ("one-stage",))
    assert one.centre.schedule == "one-stage" and one.space.schedules == ("one-stage",)
    assert not one.space.searches_schedule and one.candidates[0][1].schedule == "one-stage"
    assert "--schedules" in one.rationale[-1] and prior.centre.schedule == "gradual"  # the input is unchanged
    kept = with_schedules(prior, SCHEDULES)
    assert kept.centre == prior.centre and kept.rationale == prior.rationale
    assert wide_prior(("one-stage",)).schedules == ("one-stage",) and wide_prior().schedules == SCHEDULES
