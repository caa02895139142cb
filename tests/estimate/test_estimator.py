"""TaskEstimator end to end on real subsets: orderings, JSON round trip, bad input, edge cases."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from autotransfer.backbones import Preprocessing, create_backbone, wrap_model
from autotransfer.core.errors import UserError
from autotransfer.data import load_dataset, stratified_subsample
from autotransfer.data.types import ImageDataset
from autotransfer.estimate import TaskEstimator, TaskProfile, load_reference
from autotransfer.estimate.estimator import MMD_SIMILARITY_SCALE, auto_batch_size
from autotransfer.prior.placement import BN_W2_SIMILARITY_SCALE, similarity_from_excess, transferability_from_logme
from autotransfer.prior.quadrant import quadrant_prior

GREYSCALE = (
    "builtin:fashion-mnist?classes=5-9",
    "builtin:mnist5k",
    "builtin:animals",
    "builtin:elpv",
    "builtin:digits",
)


def _subset(spec: str, n: int, seed: int = 0) -> ImageDataset:
    return stratified_subsample(load_dataset(spec), n, seed=seed)


def _two_per_class(spec: str) -> ImageDataset:
    """2 images of each of the first two classes (4 in all), seeded."""
    ds = load_dataset(spec)
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.choice(np.flatnonzero(ds.labels == c), 2, replace=False) for c in (0, 1)])
    part = ds.subset(np.sort(pick))
    part.labels = np.asarray(part.labels)
    part.classes = part.classes[:2]
    return part


def _tail(values) -> float:
    return float(np.mean(values[len(values) // 2 :]))


def test_source_free_profile_end_to_end_and_json_round_trip(lab):
    target = _subset("builtin:fashion-mnist?classes=5-9", 60)
    profile = TaskEstimator(max_images=40, seed=0).fit(target, lab)
    div = profile.divergence
    assert div.method == "bn-w2"
    assert div.groups == [g.name for g in lab.groups]
    reference = load_reference(lab)
    np.testing.assert_allclose(div.reference, reference)
    np.testing.assert_allclose(div.excess, np.maximum(np.array(div.raw) - reference, 0.0))
    assert profile.similarity == pytest.approx(similarity_from_excess(div.excess, BN_W2_SIMILARITY_SCALE))
    assert 0.0 < profile.similarity < 1.0
    # size statistics use the whole target; features use the capped 40
    assert profile.size.images == 60 and profile.size.classes == 5
    assert any("40 of 60" in note for note in profile.notes)
    tr = profile.transferability
    assert all(math.isfinite(v) for v in (tr.logme, tr.leep, tr.hscore))
    assert tr.leep < 0.0
    assert profile.placement.quadrant.startswith("small+")
    assert profile.prior.num_groups == lab.num_groups
    assert {"features", "divergence", "transferability", "total"} <= set(profile.timings)

    text = json.dumps(profile.to_dict())
    again = TaskProfile.from_dict(json.loads(text))
    assert again.to_dict() == profile.to_dict()


def test_transferability_score_is_label_aware_and_feeds_the_prior(lab):
    target = _subset("builtin:fashion-mnist?classes=5-9", 60)
    shuffled = ImageDataset(
        spec="shuffled",
        images=target.images,
        classes=target.classes,
        labels=np.random.default_rng(0).permutation(target.labels),
    )
    estimator = TaskEstimator(max_images=60)
    real, noise = estimator.fit(target, lab), estimator.fit(shuffled, lab)
    for profile in (real, noise):
        tr = profile.transferability
        assert tr.n_ref == 60
        assert profile.transferability_score == pytest.approx(transferability_from_logme(tr.logme_over_chance))
        expected = quadrant_prior(
            profile.placement.log10_n,
            profile.similarity,
            profile.divergence.excess,
            lab.num_groups,
            num_classes=5,
            transferability=profile.transferability_score,
        )
        assert profile.prior.centre == expected.centre
    # the same images: the same (label-blind) similarity, but shuffled labels carry nothing
    assert noise.similarity == pytest.approx(real.similarity, abs=1e-9)
    assert real.transferability.logme_over_chance > 0.1 > abs(noise.transferability.logme_over_chance)
    # NLEEP (any model, no source head needed) is label-aware too
    assert real.transferability.nleep > noise.transferability.nleep + 0.2
    assert real.transferability_score > noise.transferability_score
    assert real.prior.centre.log10_elr < noise.prior.centre.log10_elr
    assert real.prior.centre.reinit_frac < noise.prior.centre.reinit_frac


def test_automatic_batch_size_keeps_the_numbers():
    assert auto_batch_size("cpu", 224) == 4 and auto_batch_size("cpu", 32) == 32
    assert auto_batch_size("cpu", 600) == 1 and auto_batch_size("cuda", 224) == 32
    lite = create_backbone("efficientnet_lite0", num_classes=2)
    target = _subset("builtin:animals?classes=0-1", 12)
    auto = TaskEstimator(max_images=12, device="cpu").fit(target, lite)  # 4 images per pass
    whole = TaskEstimator(max_images=12, device="cpu", batch_size=12).fit(target, lite)
    np.testing.assert_allclose(auto.divergence.raw, whole.divergence.raw, rtol=1e-5)
    assert auto.similarity == pytest.approx(whole.similarity, abs=1e-6)
    for name in ("logme", "leep", "hscore", "logme_over_chance"):
        assert getattr(auto.transferability, name) == pytest.approx(getattr(whole.transferability, name), abs=1e-5)


def test_fashion_source_places_fashion_5_9_nearer_than_elpv(lab):
    near, far = _subset("builtin:fashion-mnist?classes=5-9", 40), _subset("builtin:elpv", 40)
    estimator = TaskEstimator(max_images=40)
    assert estimator.fit(near, lab).similarity > estimator.fit(far, lab).similarity

    source = stratified_subsample(load_dataset("builtin:fashion-mnist?classes=0-4", require_labels=False), 100)
    with_source = TaskEstimator(max_images=40, max_source_images=100)
    near_p, far_p = with_source.fit(near, lab, source=source), with_source.fit(far, lab, source=source)
    assert near_p.divergence.method == far_p.divergence.method == "mmd"
    assert near_p.similarity > far_p.similarity
    assert _tail(near_p.divergence.raw) < _tail(far_p.divergence.raw)
    assert near_p.divergence.source.mmd_p < 0.01  # new classes are a detectable shift
    assert far_p.divergence.source.mmd > near_p.divergence.source.mmd
    assert near_p.similarity == pytest.approx(similarity_from_excess(near_p.divergence.excess, MMD_SIMILARITY_SCALE))


def test_lite0_places_imagenet_photos_nearer_than_every_greyscale_set():
    """40 images at 224 px in all: the 20 photos and 4 of each greyscale set."""
    lite = create_backbone("efficientnet_lite0", num_classes=2)
    photos = load_dataset("builtin:imagenet-photos", require_labels=False)
    # 19 classes for 20 photos cannot pass size_stats: 2 pseudo-classes (labels do not enter
    # the divergence)
    photos = ImageDataset(spec="photos", images=photos.images, labels=np.arange(20) % 2, classes=["a", "b"])
    estimator = TaskEstimator(max_images=20, batch_size=10)
    near = estimator.fit(photos, lite)
    assert near.similarity > 0.9
    for spec in GREYSCALE:
        far = estimator.fit(_two_per_class(spec), lite)
        assert far.similarity < 0.5, spec
        assert far.similarity < near.similarity, spec
        # the raw BN-W2 (no reference subtracted, so not circular for the photos) agrees
        assert _tail(far.divergence.raw) > 3 * _tail(near.divergence.raw), spec


def test_model_without_batchnorm_needs_a_source_sample():
    import timm

    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    backbone = wrap_model(
        model, 2, spec="convnext_atto (random)", preprocessing=Preprocessing((0.5,) * 3, (0.5,) * 3, 32)
    )
    target = _subset("builtin:digits?classes=0-1", 20)
    with pytest.raises(UserError, match=r"convnext_atto \(random\).*no BatchNorm layers.*--source"):
        TaskEstimator(max_images=20).fit(target, backbone)
    source = _subset("builtin:digits?classes=2-3", 20)
    profile = TaskEstimator(max_images=20).fit(target, backbone, source=source)
    assert profile.divergence.method == "mmd"
    assert len(profile.divergence.raw) == backbone.num_groups
    assert 0.0 <= profile.similarity <= 1.0


def test_constant_images_give_finite_numbers(lab):
    levels = np.array([0, 40, 80, 120, 160, 200, 255, 30, 60, 90, 220, 250], dtype=np.uint8)
    images = np.broadcast_to(levels[:, None, None, None], (12, 20, 20, 3)).copy()
    constant = ImageDataset(spec="constant", images=images, labels=np.arange(12) % 2, classes=["a", "b"])
    black = ImageDataset(
        spec="black", images=np.zeros((12, 20, 20, 3), np.uint8), labels=np.arange(12) % 2, classes=["a", "b"]
    )
    for target in (constant, black):
        for source in (None, black):
            profile = TaskEstimator(max_images=12).fit(target, lab, source=source)
            values = profile.to_dict()
            numbers = values["divergence"]["raw"] + values["divergence"]["excess"] + [values["similarity"]]
            numbers += [v for v in values["transferability"].values()]
            if source is not None:
                numbers += [v for k, v in values["divergence"]["source"].items()]
            assert all(v is not None and math.isfinite(v) for v in numbers), (target.spec, source, values)
    # the identical all-black set, measured against itself, is the same domain
    same = TaskEstimator(max_images=12).fit(black, lab, source=black)
    assert same.similarity == pytest.approx(1.0)


def test_unlabelled_folder_as_source_sample(lab, tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    sample = _subset("builtin:fashion-mnist?classes=0-4", 40, seed=1)
    for i, image in enumerate(sample.images):
        Image.fromarray(np.ascontiguousarray(image[:, :, 0]), "L").save(folder / f"{i:03d}.png")  # 1-channel files
    same = TaskEstimator(max_images=30, max_source_images=40)
    near = same.fit(_subset("builtin:fashion-mnist?split=test&classes=0-4", 30), lab, source=str(folder))
    far = same.fit(_subset("builtin:fashion-mnist?classes=5-9", 30), lab, source=f"folder:{folder}")
    assert near.divergence.source.n_source == far.divergence.source.n_source == 40
    assert near.similarity > far.similarity
    assert near.divergence.source.mmd_p > 0.01 > far.divergence.source.mmd_p


def test_bad_settings_and_targets_raise_user_errors(lab):
    digits = _subset("builtin:digits", 40)
    with pytest.raises(UserError, match="max_images"):
        TaskEstimator(max_images=1).fit(digits, lab)
    with pytest.raises(UserError, match="device"):
        TaskEstimator(device="tpu").fit(digits, lab)
    thin = ImageDataset(spec="thin", images=digits.images[:3], labels=np.array([0, 0, 1]), classes=["a", "b"])
    with pytest.raises(UserError, match="fewer than 2 images"):
        TaskEstimator().fit(thin, lab)
    with pytest.raises(UserError, match="at least 4"):
        TaskEstimator().fit(digits, lab, source=thin)


@pytest.mark.parametrize(
    "target, expected",
    [("builtin:digits?classes=3", "only one class"), ("builtin:imagenet-photos", "fewer than 2 images")],
)
def test_cli_bad_target_is_one_line_exit_2(monkeypatch, capsys, target, expected):
    from autotransfer.cli import main

    monkeypatch.setattr(sys, "argv", ["autotransfer", "estimate", target, "--model", "fashion-source"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err


def test_cli_json_prints_every_number(monkeypatch, capsys):
    from autotransfer.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "autotransfer",
            "estimate",
            "builtin:digits",
            "--model",
            "fashion-source",
            "--n",
            "60",
            "--max-images",
            "40",
            "--format",
            "json",
        ],
    )
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)
    payload = json.loads(capsys.readouterr().out)
    assert payload["size"]["images"] == 60
    assert payload["divergence"]["method"] == "bn-w2"
    assert len(payload["divergence"]["excess"]) == payload["num_groups"] == 5
    tr = payload["transferability"]
    assert all(isinstance(v, float) for k, v in tr.items() if k != "n_ref") and tr["n_ref"] == 40
    assert 0.0 <= payload["transferability_score"] <= 1.0
    assert payload["prior"]["centre"]["log10_elr"] < 0


def test_model_without_reference_reports_raw_as_excess_and_stale_reference_is_refused(tmp_path):
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    backbone = wrap_model(model, 2, spec="resnet10t (random)", preprocessing=Preprocessing((0.5,) * 3, (0.5,) * 3, 32))
    assert load_reference(backbone) is None
    target = _subset("builtin:digits?classes=0-1", 20)
    profile = TaskEstimator(max_images=20).fit(target, backbone)
    assert profile.divergence.reference is None
    np.testing.assert_allclose(profile.divergence.excess, np.maximum(profile.divergence.raw, 0.0))
    assert "no same-domain reference: raw divergence reported as excess" in profile.notes

    stale = tmp_path / "resnet10t-reference.json"
    stale.write_text(json.dumps({"method": "bn-w2", "groups": ["a", "b"], "values": [0.1, 0.2], "input_size": 32}))
    backbone.reference_profile = stale
    with pytest.raises(ValueError, match="does not fit"):
        load_reference(backbone)
    profile = TaskEstimator(max_images=20).fit(target, backbone)
    assert profile.divergence.reference is None
    assert any("shipped reference ignored" in note for note in profile.notes)


def test_cli_shows_the_surface_prior_and_refuses_a_missing_store_before_estimating(monkeypatch, capsys, tmp_path):
    from autotransfer.cli import main
    from autotransfer.core.protocol import Protocol
    from autotransfer.surface import SurfacePoint, SurfaceStore

    store = tmp_path / "surface.json"
    SurfaceStore(store).add(
        [
            SurfacePoint(
                study=f"s{i}",
                target=f"builtin:t{i}",
                model="fashion-source",
                n=100 * (i + 1),
                seed=0,
                log10_n=2.0 + 0.2 * i,
                similarity=0.2 * (i + 1),
                protocol=Protocol(log10_elr=-1.0 - 0.2 * i).to_dict(),
                score=0.7,
                metric="accuracy",
                excess=[],
            )
            for i in range(3)
        ]
    )
    args = [
        "autotransfer",
        "estimate",
        "builtin:digits",
        "--model",
        "fashion-source",
        "--n",
        "60",
        "--max-images",
        "40",
    ]
    # the active store (as tune reads it) has points for the model: its prior is shown beside the quadrant's
    monkeypatch.setenv("AUTOTRANSFER_SURFACE", str(store))
    monkeypatch.setattr(sys, "argv", [*args, "--format", "json"])
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)
    payload = json.loads(capsys.readouterr().out)
    surface = payload["surface_prior"]
    assert surface["kind"] == "surface" and payload["prior"]["kind"] == "quadrant"
    assert len(surface["candidates"]) == 2 and all(c["source"].startswith("surface:s") for c in surface["candidates"])
    assert "3 recorded studies" in surface["rationale"][0]
    # --prior quadrant: the quadrant prior alone
    monkeypatch.setattr(sys, "argv", [*args, "--format", "json", "--prior", "quadrant"])
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)
    assert json.loads(capsys.readouterr().out)["surface_prior"] is None
    # a store that does not exist: one line, exit 2, before any estimate is made
    monkeypatch.setattr(sys, "argv", [*args, "--prior", f"surface:{tmp_path / 'none.json'}"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert "none.json" in captured.err and "has no points" in captured.err and "\n" not in captured.err.strip()
    assert "Target" not in captured.out
