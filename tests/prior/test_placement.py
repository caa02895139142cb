"""Placement on the survey's map: the similarity scale, the size score, the quadrants."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autotransfer.prior.placement import (
    BN_W2_SIMILARITY_SCALE,
    DECISION_TABLE,
    LOGME_TRANSFER_SCALE,
    TRANSFER_WEIGHT,
    Placement,
    effective_similarity,
    excess_threshold,
    large_threshold,
    place,
    similarity_from_excess,
    size_score,
    transferability_from_logme,
)

# docs/design.md: BN-W2 probe at the last layers; the same-domain reference is the photos' 0.04.
RAW = {"imagenet": 0.04, "cifar": 0.27, "elpv": 0.36, "fashion": 0.39, "animals": 0.45, "mnist": 0.54}
REFERENCE = 0.04


def test_similarity_calibration_matches_design_measurements() -> None:
    sim = {k: similarity_from_excess([max(v - REFERENCE, 0.0)] * 8) for k, v in RAW.items()}
    assert sim["imagenet"] == pytest.approx(1.0)
    # sampling noise of a few hundredths above the reference still reads as very similar
    assert similarity_from_excess([0.03] * 8) >= 0.9
    for name in ("elpv", "fashion", "animals", "mnist"):  # the greyscale sets
        assert 0.2 <= sim[name] <= 0.5, (name, sim[name])
    order = sorted(sim, key=sim.get, reverse=True)
    assert order == ["imagenet", "cifar", "elpv", "fashion", "animals", "mnist"]


def test_similarity_monotone_and_bounded() -> None:
    rng = np.random.default_rng(0)
    for g in (1, 5, 8, 9):
        for _ in range(50):
            excess = rng.uniform(0, 1.5, size=g)
            s = similarity_from_excess(excess)
            assert 0.0 <= s <= 1.0
            # raising any group of the last half lowers similarity; the first half does not count
            j = int(rng.integers(g // 2, g))
            more = excess.copy()
            more[j] += 0.1
            assert similarity_from_excess(more) < s
            if g // 2:
                early = excess.copy()
                early[0] += 0.1
                assert similarity_from_excess(early) == pytest.approx(s)
    assert similarity_from_excess([0.0] * 8) == 1.0
    assert similarity_from_excess([50.0] * 8) == pytest.approx(0.0, abs=1e-12)
    # noise below the reference counts as zero excess
    assert similarity_from_excess([-0.1] * 8) == 1.0
    # a larger scale (a method with larger units) reads the same excess as more similar
    assert similarity_from_excess([0.3] * 8, scale=1.0) > similarity_from_excess([0.3] * 8)


def test_similarity_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        similarity_from_excess([])
    with pytest.raises(ValueError, match="finite"):
        similarity_from_excess([0.1, float("nan")])
    with pytest.raises(ValueError, match="scale"):
        similarity_from_excess([0.1], scale=0.0)


def test_excess_threshold_is_the_similar_split_per_group() -> None:
    t = excess_threshold()
    assert math.exp(-t / BN_W2_SIMILARITY_SCALE) == pytest.approx(0.5)
    assert similarity_from_excess([t] * 8) == pytest.approx(0.5)


def test_size_score_combines_images_and_per_class() -> None:
    assert large_threshold(10) == 2000 and large_threshold(2) == 2000 and large_threshold(100) == 10000
    assert size_score(math.log10(2000), 10) == pytest.approx(0.5)
    scores = [size_score(math.log10(n), 10) for n in (50, 100, 300, 1000, 3000, 10000, 60000)]
    assert all(a < b for a, b in zip(scores, scores[1:]))
    assert scores[0] < 0.01 and scores[-1] > 0.99
    # 5,000 images: large over 10 classes (500 per class), small over 100 classes (50 per class)
    assert size_score(math.log10(5000), 10) > 0.5 > size_score(math.log10(5000), 100)
    # more classes at the same N never make a target "larger"
    assert size_score(3.5, 10) >= size_score(3.5, 50) >= size_score(3.5, 200)


@pytest.mark.parametrize(
    "n, c, s, quadrant",
    [
        (100, 10, 0.95, "small+similar"),
        (300, 10, 0.25, "small+dissimilar"),
        (60000, 10, 0.9, "large+similar"),
        (60000, 10, 0.3, "large+dissimilar"),
        (1797, 10, 0.5, "small+similar"),  # digits: just below the size threshold; 0.5 is similar
        (2624, 2, 0.4, "large+dissimilar"),  # ELPV-sized: above 2,000 with 1,312 per class
    ],
)
def test_place_quadrants(n: int, c: int, s: float, quadrant: str) -> None:
    p = place(n, c, s)
    assert p.quadrant == quadrant and p.protocol == DECISION_TABLE[quadrant]
    assert p.log10_n == pytest.approx(math.log10(n)) and p.images_per_class == pytest.approx(n / c)
    assert p.dissimilarity == pytest.approx(1 - s)
    assert Placement.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_place_bad_input() -> None:
    with pytest.raises(ValueError, match="similarity"):
        place(100, 10, 1.2)
    with pytest.raises(ValueError, match="num_images"):
        place(0, 10, 0.5)


def test_transferability_scale_and_effective_similarity() -> None:
    # 0 at or below chance, 0.5 at the calibration median (scale x ln 2), monotone, < 1
    assert transferability_from_logme(-0.3) == transferability_from_logme(0.0) == 0.0
    assert transferability_from_logme(LOGME_TRANSFER_SCALE * math.log(2)) == pytest.approx(0.5)
    values = [transferability_from_logme(g) for g in np.linspace(0, 3, 31)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] < 1.0
    # benchmark LogME over chance at 300 images (RESULTS.md, session 2): the ImageNet model's
    # elpv (least gain) below its Fashion-MNIST 5-9 (most gain)
    assert transferability_from_logme(0.213) < 0.5 < transferability_from_logme(0.782)
    with pytest.raises(ValueError, match="finite"):
        transferability_from_logme(float("nan"))
    # the combination: increasing in both, the similarity alone without a transferability
    assert effective_similarity(0.4, None) == 0.4
    assert effective_similarity(0.4, 0.8) == pytest.approx((1 - TRANSFER_WEIGHT) * 0.4 + TRANSFER_WEIGHT * 0.8)
    grid = np.linspace(0, 1, 11)
    for a, b in zip(grid, grid[1:]):
        assert effective_similarity(a, 0.5) < effective_similarity(b, 0.5)
        assert effective_similarity(0.5, a) < effective_similarity(0.5, b)
    with pytest.raises(ValueError, match="transferability"):
        effective_similarity(0.5, -0.1)
