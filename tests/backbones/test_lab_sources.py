"""The laboratory sources (issue 29): digit-source and silhouette-source load with their groups and
reference, their sidecars say what they were trained and tested on, and the guard keeps every
benchmark off the images a lab source was pretrained on."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autotransfer.backbones import create_backbone, run_groups
from autotransfer.backbones.catalog import check_not_trained_on, lab_training_images, trained_images_in
from autotransfer.backbones.create import LAB_SOURCES
from autotransfer.core.errors import UserError
from autotransfer.core.paths import assets_dir
from autotransfer.data import load_dataset
from autotransfer.estimate.reference import REFERENCE_SOURCES, load_reference

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
NEW = ("digit-source", "silhouette-source")
POOLS = {"digit-source": "builtin:mnist5k", "silhouette-source": "builtin:animals"}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NEW)
def test_new_source_loads_and_reproduces_its_held_out_accuracy(name: str) -> None:
    meta = json.loads((assets_dir() / f"{name}.json").read_text())
    assert (assets_dir() / f"{name}.safetensors").stat().st_size < 6 * 2**20
    assert meta["dtype"] == "float16" and meta["script"] == "benchmarks/build_lab_sources.py"
    assert meta["recipe"]["train_time_s"] > 0 and meta["source_test_accuracy"] >= 0.85
    backbone = create_backbone(name, 3)
    assert backbone.num_groups == 5 and backbone.chain
    assert [g.name for g in backbone.groups] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert backbone.preprocessing.input_size == 32 and backbone.source_head.out_features == 5
    assert backbone.reference_profile == assets_dir() / f"{name}-reference.json"
    reference = load_reference(backbone)
    assert reference is not None and reference.shape == (5,)

    # the held-out test set the sidecar names, through the shipped float16 weights and source head
    tested = load_dataset(meta["tested_on"]["selection"])
    assert len(tested) == meta["tested_on"]["count"] == meta["source_test_size"]
    pre = backbone.preprocessing
    x = _module("build_fashion_source").to_input(np.asarray(tested.images)[..., 0], pre.mean[0], pre.std[0])
    with torch.no_grad():
        logits = backbone.source_head(run_groups(backbone, x, 0, backbone.num_groups).mean(dim=(2, 3)))
    accuracy = float((logits.argmax(1).numpy() == tested.labels).mean())
    assert abs(accuracy - meta["source_test_accuracy"]) <= 0.02, accuracy


@pytest.mark.parametrize("name", NEW)
def test_sidecar_says_what_it_was_trained_and_tested_on(name: str) -> None:
    meta = json.loads((assets_dir() / f"{name}.json").read_text())
    trained, tested = meta["trained_on"], meta["tested_on"]
    pool = load_dataset(f"{POOLS[name]}?classes=0-4")
    assert trained["dataset"] == tested["dataset"] == POOLS[name]
    assert trained["classes"] == tested["classes"] == list(pool.classes) == meta["classes"]
    assert trained["count"] + tested["count"] == len(pool)  # a partition of classes 0-4
    assert sum(trained["per_class"].values()) == trained["count"]
    assert sum(tested["per_class"].values()) == tested["count"]
    # the reference profile is measured on held-out images only
    assert REFERENCE_SOURCES[name][0] == tested["selection"]
    found = lab_training_images(name)
    assert found is not None and found.n_images == trained["count"] and found.dataset == POOLS[name]


def test_guard_counts_training_images_in_a_pool() -> None:
    digits = lab_training_images("digit-source")
    assert digits is not None and lab_training_images("efficientnet_lite0") is None
    assert trained_images_in("digit-source", "builtin:mnist5k") == digits.n_images
    assert trained_images_in("digit-source", "builtin:mnist?classes=4-6&n=100") == digits.per_class["4"]
    assert trained_images_in("digit-source", "builtin:mnist5k?classes=5-9") == 0
    assert trained_images_in("digit-source", "builtin:digits") == 0  # UCI optdigits: other images
    assert trained_images_in("fashion-source", "builtin:fashion-mnist?split=test") == 0
    assert trained_images_in("fashion-source", "builtin:fashion-mnist?classes=Coat,Bag") == 6000
    assert trained_images_in("silhouette-source", "builtin:animals?classes=Elephant,Zebra") == 0
    assert trained_images_in("efficientnet_lite0", "builtin:mnist5k") == 0
    with pytest.raises(UserError, match=r"builtin:animals holds 4000 images that silhouette-source"):
        check_not_trained_on("silhouette-source", "builtin:animals")


def test_bench_judged_cells_never_judge_a_lab_source_on_its_training_images() -> None:
    """Every bench_judged cell passes the guard with its own model; with a lab source in its place,
    the guard refuses exactly the cells whose pool holds that source's training images, and Judge
    (which every judged row goes through) refuses it with the one-line reason."""
    bench = _module("bench_judged")
    refused = set()
    for cell in bench.DEFAULT_CELLS:
        target, n, seed = cell.split(":")
        settings = bench.settings_for(target, int(n), int(seed))
        check_not_trained_on(settings.model, settings.target)  # the cells as they are: allowed
        for source in LAB_SOURCES:
            try:
                check_not_trained_on(source, settings.target)
            except UserError as err:
                assert source in str(err) and settings.target in str(err)
                refused.add((target, source))
    assert refused == {("mnist5k", "digit-source"), ("animals", "silhouette-source")}
    with pytest.raises(UserError, match="pretrained on"):
        bench.Judge(replace(bench.settings_for("mnist5k", 200, 0), model="digit-source"))
    # the near targets of bench_lab_sources are allowed for every lab source
    for target in _module("bench_lab_sources").TARGETS.values():
        for source in LAB_SOURCES:
            check_not_trained_on(source, target)


def test_models_command_lists_the_lab_sources() -> None:
    from autotransfer.cli import app

    result = CliRunner().invoke(app, ["models", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    for name in LAB_SOURCES:
        assert (rows[name]["kind"], rows[name]["num_groups"], rows[name]["input_size"]) == ("builtin", 5, 32)
        assert rows[name]["offline"] is True
    assert np.isclose(rows["digit-source"]["params"], rows["fashion-source"]["params"])
