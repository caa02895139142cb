"""The continuous quadrant prior moves in the documented directions; fixed protocols are valid."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from autotransfer.core.protocol import ParamRange, Protocol, ProtocolSpace
from autotransfer.prior.none import wide_prior
from autotransfer.prior.placement import BN_W2_SIMILARITY_SCALE, excess_threshold
from autotransfer.prior.quadrant import (
    Prior,
    crossing_depth,
    less_similar_protocol,
    linear_probe_protocol,
    probe_control_protocols,
    quadrant_prior,
    recommended_protocol,
    scratch_protocols,
)

G = 8


def _profile_for(similarity: float, g: int = G) -> list[float]:
    """A profile rising with depth whose last half gives ``similarity``."""
    level = -BN_W2_SIMILARITY_SCALE * math.log(max(similarity, 1e-9))
    return [level * (i + 1) / g for i in range(g // 2)] + [level] * (g - g // 2)


def _prior(n: int, s: float, profile: list[float] | None = None, g: int = G, c: int = 10, **kw) -> Prior:
    return quadrant_prior(math.log10(n), s, _profile_for(s, g) if profile is None else profile, g, num_classes=c, **kw)


def _inside(p: Protocol, space: ProtocolSpace) -> bool:
    for name, rng in space.ranges.items():
        v = float(getattr(p, name))
        if not rng.low - 1e-12 <= v <= rng.high + 1e-12:
            return False
    return p.bn_mode in space.bn_modes


def test_similarity_falling_raises_elr_and_reinit_and_lowers_freeze() -> None:
    for n in (200, 1000, 5000):
        priors = [_prior(n, s) for s in (0.95, 0.8, 0.6, 0.4, 0.25, 0.1)]
        elr = [p.centre.log10_elr for p in priors]
        reinit = [p.centre.reinit_frac for p in priors]
        freeze = [p.centre.freeze_frac for p in priors]
        assert all(a < b for a, b in zip(elr, elr[1:])), elr
        assert all(a < b for a, b in zip(reinit, reinit[1:])), reinit
        assert all(a >= b for a, b in zip(freeze, freeze[1:])), freeze
        assert freeze[0] > freeze[-1] + 0.1, (n, freeze)
    # also when only the similarity argument moves (same profile): the direction holds
    fixed = _profile_for(0.5)
    lo, hi = _prior(500, 0.3, fixed), _prior(500, 0.7, fixed)
    assert lo.centre.log10_elr > hi.centre.log10_elr
    assert lo.centre.reinit_frac > hi.centre.reinit_frac
    assert lo.centre.freeze_frac < hi.centre.freeze_frac


def test_size_falling_raises_freeze_and_regularisation() -> None:
    for s in (0.9, 0.6, 0.35):
        priors = [_prior(n, s) for n in (60000, 10000, 3000, 1000, 300, 100)]
        for name in ("freeze_frac", "weight_decay", "l2sp"):
            values = [getattr(p.centre, name) for p in priors]
            assert all(a < b for a, b in zip(values, values[1:])), (s, name, values)
        decay = [p.centre.layer_decay for p in priors]
        assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_transferability_moves_the_prior_like_similarity_and_keeps_the_domain_rules() -> None:
    """Higher LogME-based transferability -> lower ELR, fewer re-initialised groups, deeper
    freezing; the quadrant, the BN mode and the freeze depth along the profile stay on the
    domain similarity; no transferability gives the similarity-only prior."""
    for n, s in ((300, 0.35), (1000, 0.6), (5000, 0.2)):
        profile = _profile_for(s)
        priors = [_prior(n, s, profile, transferability=t) for t in (0.05, 0.3, 0.5, 0.7, 0.95)]
        elr = [p.centre.log10_elr for p in priors]
        reinit = [p.centre.reinit_frac for p in priors]
        freeze = [p.centre.freeze_frac for p in priors]
        assert all(a > b for a, b in zip(elr, elr[1:])), elr
        assert all(a > b for a, b in zip(reinit, reinit[1:])), reinit
        assert all(a <= b for a, b in zip(freeze, freeze[1:])), freeze
        assert elr[0] > elr[-1] + 0.5  # most of the ELR span (0.92 decades) follows t
        assert len({p.quadrant for p in priors}) == 1 and len({p.centre.bn_mode for p in priors}) == 1
        plain = _prior(n, s, profile)
        assert plain.centre == _prior(n, s, profile, transferability=None).centre
        # t equal to s reproduces the similarity-only prior (effective similarity = s)
        assert _prior(n, s, profile, transferability=s).centre == plain.centre
        assert any("effective similarity" in line for line in priors[0].rationale)
    # similarity still moves the scalar rules (a tenth of them) at fixed transferability
    fixed = _profile_for(0.5)
    lo, hi = _prior(500, 0.3, fixed, transferability=0.5), _prior(500, 0.7, fixed, transferability=0.5)
    assert lo.centre.log10_elr > hi.centre.log10_elr and lo.centre.reinit_frac > hi.centre.reinit_frac
    with pytest.raises(ValueError, match="transferability"):
        _prior(500, 0.5, transferability=1.5)


def test_freeze_follows_the_excess_profile() -> None:
    # both profiles have the same last half, hence the same similarity; one rises early
    early = [0.30, 0.40, 0.40, 0.40, 0.40, 0.40, 0.40, 0.40]
    late = [0.00, 0.02, 0.10, 0.20, 0.40, 0.40, 0.40, 0.40]
    flat = [0.0] * 4 + [0.40] * 4
    s = math.exp(-0.40 / BN_W2_SIMILARITY_SCALE)
    f = {k: _prior(300, s, prof).centre.freeze_frac for k, prof in (("early", early), ("late", late), ("flat", flat))}
    assert f["early"] < f["late"] < f["flat"]
    t, w = excess_threshold(), 0.1 * BN_W2_SIMILARITY_SCALE
    assert crossing_depth(early, t, w) < 1.0  # fails inside the stem
    assert 3.0 < crossing_depth(late, t, w) < crossing_depth(flat, t, w) == pytest.approx(4.0, abs=0.01)
    assert crossing_depth([0.0] * G, t, w) > G - 0.1
    assert crossing_depth([0.0] * G, t, 1e-6) == pytest.approx(G)  # the hard count as width -> 0
    assert crossing_depth([0.0, 0.0, 0.5, 0.0], t, 1e-6) == pytest.approx(2.0)
    # continuous where a hard first crossing jumps: one group hovering at the threshold
    below = crossing_depth([0.1, t - 1e-6, 0.1, 0.1], t, w)
    above = crossing_depth([0.1, t + 1e-6, 0.1, 0.1], t, w)
    assert below == pytest.approx(above, abs=1e-3)
    # monotone: raising any group's excess never deepens the crossing
    rng = np.random.default_rng(1)
    for _ in range(100):
        prof = rng.uniform(0, 0.6, size=G)
        j = int(rng.integers(G))
        up = prof.copy()
        up[j] += 0.05
        assert crossing_depth(up, t, w) <= crossing_depth(prof, t, w) + 1e-12


def test_quadrant_corners_match_the_decision_table() -> None:
    small_similar = _prior(100, 0.97)
    assert small_similar.quadrant == "small+similar"
    assert small_similar.centre.freeze_frac > 0.85 and small_similar.integers()[0] >= G - 1  # feature extraction
    large_similar = _prior(100000, 0.97)
    assert large_similar.quadrant == "large+similar"
    assert large_similar.integers() == (0, 0)  # fine-tune everything
    small_far = _prior(200, 0.2)
    assert small_far.quadrant == "small+dissimilar"
    assert small_far.centre.log10_elr > small_similar.centre.log10_elr + 0.5  # higher ELR
    assert small_far.centre.freeze_frac < 0.3
    large_far = _prior(100000, 0.1)
    assert large_far.quadrant == "large+dissimilar"
    f, r = large_far.integers()
    assert f == 0 and r >= 3  # more re-initialised groups
    assert r > _prior(100000, 0.9).integers()[1]


def test_prior_is_continuous_across_quadrant_borders() -> None:
    a, b = _prior(1000, 0.499), _prior(1000, 0.501)
    assert a.quadrant != b.quadrant
    for name in ("log10_elr", "freeze_frac", "reinit_frac", "head_lr_mult", "weight_decay", "l2sp"):
        assert getattr(a.centre, name) == pytest.approx(getattr(b.centre, name), rel=0.02, abs=0.01), name
    c, d = _prior(1990, 0.7), _prior(2010, 0.7)
    assert c.quadrant == "small+similar" and d.quadrant == "large+similar"
    assert c.centre.freeze_frac == pytest.approx(d.centre.freeze_frac, abs=0.02)


def test_centres_lie_inside_their_spaces() -> None:
    narrow = ProtocolSpace(
        ranges={**ProtocolSpace().ranges, "log10_elr": ParamRange(-2.0, -1.0), "freeze_frac": ParamRange(0.0, 0.5)}
    )
    grid = itertools.product((20, 300, 2000, 60000), (0.0, 0.3, 0.5, 0.8, 1.0), (1, 5, 8, 9), (None, narrow))
    for n, s, g, bounds in grid:
        p = _prior(n, s, g=g, bounds=bounds)
        assert _inside(p.centre, p.space), (n, s, g)
        assert _inside(p.centre, bounds or ProtocolSpace())
        f, r = p.integers()
        assert 0 <= f <= g and 0 <= r <= g - f
        if bounds is None:
            assert p.space.ranges["log10_elr"].high >= 0.0  # reaches ELR 1 (lr 0.1 at m 0.9)
            # the prior centres the search, it does not fence it in (issue 14): the ELR range
            # is the wide bounds' four decades; the prior's spread says where to start
            assert p.space.ranges["log10_elr"].high - p.space.ranges["log10_elr"].low == 4.0
            assert p.spread["log10_elr"] == 1.0


def test_no_profile_and_bad_input() -> None:
    a = quadrant_prior(3.0, 0.9, None, G, num_classes=10)
    b = quadrant_prior(3.0, 0.3, None, G, num_classes=10)
    assert a.centre.freeze_frac > b.centre.freeze_frac
    with pytest.raises(ValueError, match="one value per depth group"):
        quadrant_prior(3.0, 0.5, [0.1] * 5, G, num_classes=10)
    with pytest.raises(ValueError, match="similarity"):
        quadrant_prior(3.0, -0.1, None, G, num_classes=10)
    with pytest.raises(ValueError, match="num_groups"):
        quadrant_prior(3.0, 0.5, None, 0, num_classes=10)


def test_prior_round_trip_and_rationale() -> None:
    p = _prior(500, 0.35)
    d = json.loads(json.dumps(p.to_dict(), allow_nan=False))
    back = Prior.from_dict(d)
    assert back.centre == p.centre and back.space.to_dict() == p.space.to_dict()
    assert back.quadrant == p.quadrant and back.rationale == p.rationale and back.integers() == p.integers()
    assert (d["freeze"], d["reinit"]) == p.integers()
    text = "\n".join(p.rationale)
    for source in ("arXiv 2205.09904", "Li et al., ICLR 2020", "docs/design.md"):
        assert source in text


def test_fixed_protocols_are_valid_and_mirror_their_settings() -> None:
    bounds = ProtocolSpace()
    rec = recommended_protocol()
    assert rec.lr == pytest.approx(0.003) and rec.momentum == 0.9 and rec.integers(G) == (0, 0)
    for g, r in ((8, 2), (5, 2), (2, 2), (1, 1)):
        less = less_similar_protocol(g)
        assert less.integers(g) == (0, r)
    less = less_similar_protocol(G)
    assert less.lr == pytest.approx(0.025) and less.elr > rec.elr
    probe = linear_probe_protocol()
    assert probe.integers(G) == (G, 0) and probe.freeze_frac == 1.0
    scratch = scratch_protocols()
    assert len(scratch) == 1 and scratch[0].elr == pytest.approx(1.0)  # one run (issue 27)
    assert all(p.integers(G) == (0, G) and p.elr > less.elr for p in scratch)
    controls = probe_control_protocols()
    assert len(controls) == 2 and len({p.log10_elr for p in controls}) == 2
    assert all(p.integers(G) == (G, 0) for p in controls)
    assert min(p.elr for p in controls) < probe.elr < max(p.elr for p in controls)
    for p in [rec, less, probe, *scratch, *controls]:
        assert bounds.clip(p) == p  # inside the wide bounds, so enqueueing does not move it
        assert Protocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError, match="num_groups"):
        less_similar_protocol(0)


def test_wide_prior_is_the_default_space() -> None:
    wide = wide_prior()
    assert wide.to_dict() == ProtocolSpace().to_dict()
    centred = _prior(1000, 0.5).space
    widths = {k: r.high - r.low for k, r in wide.ranges.items() if not r.log}
    assert all(centred.ranges[k].high - centred.ranges[k].low <= w + 1e-12 for k, w in widths.items())
    assert np.isclose(wide.ranges["log10_elr"].high, 0.5)
