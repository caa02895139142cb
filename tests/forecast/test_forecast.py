"""The forecast before any trial (issue 30): the shipped evidence, the model's intervals, the job's
widening, and the estimate command's forecast line and JSON field."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from autotransfer.forecast import (
    EVIDENCE_VERSION,
    EvidenceError,
    fit_gain_model,
    forecast_task,
    load_evidence,
    probe_accuracy,
)
from autotransfer.forecast.evidence import ASSET, FEATURES


@pytest.fixture(scope="module")
def evidence():
    return load_evidence()


def test_shipped_asset_loads_and_validates(evidence):
    raw = json.loads(ASSET.read_text())
    assert raw["version"] == EVIDENCE_VERSION
    assert len(evidence.rows) == len(raw["rows"]) >= 10
    assert {r.kind for r in evidence.rows} == {"judged", "surface"}
    for row in evidence.rows:
        assert set(FEATURES) <= set(row.features) and all(np.isfinite(list(row.features.values())))
        assert 0 < row.outcome <= 1 and row.model == "efficientnet_lite0"
        assert row.outcome_method in ("k", "z", "test_score")
    assert len({r.target for r in evidence.of_kind("judged")}) == 3


@pytest.mark.parametrize(
    "text, needle",
    [
        ("not json", "not readable JSON"),
        ('{"version": 99, "rows": []}', "version 99"),
        ('{"version": %d, "rows": []}' % EVIDENCE_VERSION, "has no rows"),
        ('{"version": %d, "rows": [{"cell": "x"}]}' % EVIDENCE_VERSION, "lacks"),
    ],
)
def test_bad_asset_is_one_clear_error(tmp_path, text, needle):
    path = tmp_path / "evidence.json"
    path.write_text(text)
    with pytest.raises(EvidenceError, match=needle) as err:
        load_evidence(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EvidenceError, match="does not exist"):
        load_evidence(tmp_path / "missing.json")


def test_row_with_bad_features_is_refused(tmp_path):
    raw = json.loads(ASSET.read_text())
    raw["rows"][0]["features"]["probe"] = None
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(raw))
    with pytest.raises((EvidenceError, TypeError)):
        load_evidence(path)
    del raw["rows"][0]["features"]["probe"]
    path.write_text(json.dumps(raw))
    with pytest.raises(EvidenceError, match="must have the features"):
        load_evidence(path)


def test_interval_widens_far_from_the_evidence(evidence):
    model = fit_gain_model(evidence.rows)
    assert model.features, "the shipped model reads features"
    row = evidence.of_kind("judged")[0]
    near = model.predict(row.features)
    # every feature the model reads moved 6 of the evidence's standard deviations away
    moved = {f: row.features[f] + 6 * float(s) for f, s in zip(model.features, model.scale)}
    far = model.predict({**row.features, **moved})
    assert near.distance < 0.5 and far.distance > 3
    assert far.sd > 1.2 * near.sd
    assert near.nearest == row.cell or near.distance < 0.3


def _profile_of(row):
    """A profile dict with the row's coordinates (what forecast_task reads of a TaskProfile)."""
    f = row.features
    return {
        "model": row.model,
        "metric": "accuracy",
        "size": {"classes": int(f["classes"]), "metric": "accuracy"},
        "similarity": f["similarity"],
        "transferability_score": f["transferability"],
        "transferability": {"logme_over_chance": f["logme_over_chance"]},
        "divergence": {"excess": [f["excess_mean"]] * 7 + [f["excess_tail"]]},
    }


def test_the_job_widens_the_interval_and_says_so(evidence):
    row = next(r for r in evidence.of_kind("judged") if r.cell == "animals:200:0")
    profile = _profile_of(row)
    probes = row.features["probe"]
    base = forecast_task(profile, probes, row.n)
    assert base.low < base.score < base.high and base.like > 0 and not base.notes
    assert f"({base.like} like this job" in base.describe()
    other = forecast_task(replace_model(profile, "timm:resnet18"), probes, row.n)
    assert other.like == 0 and other.high - other.low > base.high - base.low
    assert "0 like this job" in other.describe() and "timm:resnet18" in other.notes[0]
    big = forecast_task(profile, probes, row.n, resolution=224)
    assert big.like == 0 and "224 px" in big.notes[0] and big.sd > base.sd
    short = forecast_task(profile, probes, row.n, trials=5, time_budget_s=120)
    assert short.sd > base.sd and len(short.notes) == 2
    payload = json.loads(json.dumps(base.to_dict()))
    assert payload["interval"] == [base.low, base.high] and payload["level"] == 0.8


def replace_model(profile: dict, model: str) -> dict:
    return {**profile, "model": model}


def test_probe_reads_the_features():
    """A separable task probes near 1, noise near chance; balanced accuracy for an imbalanced one."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    signal = rng.normal(size=(90, 16)) + 4 * np.eye(16)[labels]
    assert probe_accuracy(signal, labels) > 0.95
    noise = rng.normal(size=(90, 16))
    assert probe_accuracy(noise, labels) < 0.6
    unbalanced = np.array([0] * 40 + [1] * 4)
    score = probe_accuracy(rng.normal(size=(44, 8)), unbalanced, "balanced_accuracy")
    assert 0.0 <= score <= 0.8


def test_estimate_task_forecasts_the_job():
    from autotransfer.pipeline.estimate import estimate_task

    measured = estimate_task("builtin:digits", n=100, trials=10)
    forecast = measured.forecast
    assert forecast is not None and 0.1 <= forecast.low < forecast.score < forecast.high <= 1
    assert forecast.like > 0 and "10 trials" in forecast.notes[0]
    assert measured.to_dict()["forecast"]["score"] == forecast.score
    assert replace(measured, forecast=None).to_dict()["forecast"] is None
