"""``surface.models``: which model the surface's past studies expect to do best near a target."""

from __future__ import annotations

import json

import pytest

from autotransfer.core.protocol import Protocol
from autotransfer.surface import SurfacePoint, SurfaceStore, expected_score, expected_scores


def _point(model: str, log10_n: float, similarity: float, score: float, study: str) -> SurfacePoint:
    return SurfacePoint(
        study=study,
        target="builtin:animals",
        model=model,
        n=int(10**log10_n),
        seed=0,
        log10_n=log10_n,
        similarity=similarity,
        protocol=Protocol().to_dict(),
        score=score,
        test_score=score,
        metric="accuracy",
    )


def test_the_nearest_studies_speak_for_a_model_and_far_ones_barely_count():
    points = [
        _point("a", 2.3, 0.5, 0.90, "a-near"),
        _point("a", 3.5, 0.1, 0.50, "a-far"),  # 2.4 bandwidths of size and 2.7 of similarity away
        _point("b", 2.3, 0.5, 0.70, "b-near"),
    ]
    a = expected_score(points, "a", 2.3, 0.5)
    assert a.score == pytest.approx(0.90, abs=0.01) and a.studies == 2
    assert a.nearest == pytest.approx(0.0) and 1.0 <= a.support < 1.01  # the far study adds almost nothing
    assert expected_score(points, "b", 2.3, 0.5).score == pytest.approx(0.70)
    # far from every study of a model: the nearest one speaks, and the evidence says it is thin
    lonely = expected_score(points, "b", 4.5, 0.95)
    assert lonely.score == pytest.approx(0.70) and lonely.support < 1e-5 and lonely.nearest > 4
    none = expected_score(points, "c", 2.3, 0.5)
    assert none.score is None and none.studies == 0


def test_expected_scores_read_the_shipped_surface_and_an_absent_one(tmp_path):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "benchmarks" / "surface-imagenet.json"
    models = {p["model"] for p in json.loads(shipped.read_text())["points"]}
    assert "efficientnet_lite0" in models
    out = expected_scores(shipped, {"efficientnet_lite0": (2.23, 0.4), "no-such-model": (2.23, 0.4)})
    lite0 = out["efficientnet_lite0"]
    assert lite0.studies == len(SurfaceStore(shipped).load(model="efficientnet_lite0"))
    assert lite0.score is not None and 0.0 < lite0.score <= 1.0 and lite0.support > 0
    assert out["no-such-model"].score is None
    empty = expected_scores(tmp_path / "none.json", {"efficientnet_lite0": (2.0, 0.5)})
    assert empty["efficientnet_lite0"].score is None
