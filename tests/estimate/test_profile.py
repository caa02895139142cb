"""TaskProfile: to_dict / from_dict round trip, JSON safety, and the rich tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rich.console import Console
from sklearn.datasets import load_digits

from autotransfer.data.types import ImageDataset
from autotransfer.estimate.profile import DivergenceProfile, SourceMeasures, TaskProfile, Transferability
from autotransfer.estimate.size import size_stats
from autotransfer.prior.placement import place, similarity_from_excess
from autotransfer.prior.quadrant import quadrant_prior
from autotransfer.report.profile_table import profile_tables

SOURCE = dict(mmd=0.21, mmd_p=0.005, sinkhorn=3.5, coral=0.8, n_target=500, n_source=500)
GROUPS = ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6+head"]


def _digits() -> ImageDataset:
    d = load_digits()
    grey = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return ImageDataset(
        spec="builtin:digits",
        images=np.repeat(grey[..., None], 3, axis=-1),
        labels=d.target.astype(np.int64),
        classes=[str(c) for c in range(10)],
    )


def _profile(source: bool = True) -> TaskProfile:
    ds = _digits()
    size = size_stats(ds)
    # numpy values on purpose: the estimator's arrays must come out as plain JSON numbers
    raw = np.array([0.31, 0.42, 0.47, 0.50, 0.52, 0.55, 0.58, 0.61], dtype=np.float32)
    reference = np.array([0.02, 0.03, 0.03, 0.04, 0.04, 0.04, 0.05, 0.05])
    excess = np.maximum(raw - reference, 0.0)
    similarity = similarity_from_excess(excess)
    placement = place(size.images, size.classes, similarity)
    prior = quadrant_prior(placement.log10_n, similarity, list(excess), len(GROUPS), num_classes=size.classes)
    return TaskProfile(
        spec=ds.spec,
        fingerprint=ds.fingerprint,
        model="efficientnet_lite0",
        num_groups=len(GROUPS),
        size=size,
        similarity=similarity,
        divergence=DivergenceProfile(
            method="bn-w2",
            groups=GROUPS,
            raw=list(raw),
            reference=list(reference),
            excess=list(excess),
            source=SourceMeasures(**{**SOURCE, "mmd": np.float64(0.21)}) if source else None,
        ),
        transferability=Transferability(logme=np.float32(-0.71), leep=-1.9, hscore=None),
        placement=placement,
        prior=prior,
        timings={"features": 1.25, "total": np.float64(3.5)},
        notes=["capped at 1,000 images"],
    )


def test_round_trip_and_json() -> None:
    profile = _profile()
    d = profile.to_dict()
    text = json.dumps(d, allow_nan=False)  # strict JSON: every number finite and plain
    back = TaskProfile.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back.size == profile.size
    assert back.placement == profile.placement
    assert back.prior is not None and profile.prior is not None
    assert back.prior.centre == profile.prior.centre
    assert back.prior.space.to_dict() == profile.prior.space.to_dict()
    assert back.divergence is not None and back.divergence.excess == pytest.approx(list(profile.divergence.excess))
    assert back.divergence.source == SourceMeasures(**SOURCE)
    assert back.transferability == Transferability(logme=pytest.approx(-0.71), leep=-1.9, hscore=None)
    assert d["metric"] == "accuracy" and d["size"]["images"] == 1797
    assert d["prior"]["freeze"] == profile.prior.integers()[0]
    assert isinstance(d["divergence"]["raw"][0], float) and isinstance(d["timings"]["total"], float)


def test_optional_sections_and_nan() -> None:
    profile = _profile(source=False)
    profile.divergence.raw[0] = float("nan")  # e.g. a layer that could not be measured
    profile.transferability = None
    profile.prior = None
    d = profile.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["divergence"]["raw"][0] is None and d["divergence"]["source"] is None
    back = TaskProfile.from_dict(d)
    assert math.isnan(back.divergence.raw[0]) and back.prior is None and back.transferability is None


def test_bad_values_rejected() -> None:
    profile = _profile()
    with pytest.raises(ValueError, match="similarity"):
        TaskProfile.from_dict({**profile.to_dict(), "similarity": 1.5})
    with pytest.raises(ValueError, match="one value per depth group"):
        DivergenceProfile(method="bn-w2", groups=["a", "b"], raw=[0.1], excess=[0.1, 0.2])
    with pytest.raises(ValueError, match="version"):
        TaskProfile.from_dict({**profile.to_dict(), "version": 99})


def test_tables_render_every_section() -> None:
    profile = _profile()
    tables = profile_tables(profile)
    console = Console(record=True, width=160)
    for table in tables:
        console.print(table)
    text = console.export_text()
    f, r = profile.prior.integers()
    # last group: raw 0.61, reference 0.05, excess 0.56
    assert "0.6100" in text and "0.0500" in text and "0.5600" in text
    for expected in (
        "builtin:digits",
        "blocks.6+head",
        "bn-w2",
        "accuracy",
        "LogME",
        "MMD^2",
        "quadrant",
        profile.placement.quadrant,
        f"f = {f}",
        f"r = {r}",
        "log10_elr",
        "Li et al.",
        "features",
    ):
        assert expected in text, expected
    # divergence rows: one per group with raw, reference and excess
    assert text.count("blocks.") >= len(GROUPS) - 1
    titles = [str(t.title) for t in tables]
    assert any(t.startswith("Divergence by depth") for t in titles) and any(t.startswith("Prior") for t in titles)
    # without a source sample or prior, those tables are left out
    profile.divergence.source = None
    profile.prior = None
    titles = [str(t.title) for t in profile_tables(profile)]
    assert not any(t.startswith(("Prior", "Against")) for t in titles)
