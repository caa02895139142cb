"""Issue 28, the model folder as a deliverable: Hugging Face front matter on its card, no path of the
training machine in any of its files, file modes that follow the umask, and a timm snippet that gives
an ensemble's own probabilities.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.test_faults_outputs import CLASSES
from tests.test_faults_outputs import save_ensemble as save  # one helper writes the test folders


@pytest.fixture(scope="module")
def backbones():
    """Three small fine-tuned-looking backbones (the lab's narrow ResNet, random heads)."""
    from autotransfer.backbones import create_backbone

    torch.manual_seed(0)
    out = []
    for _ in range(3):
        backbone = create_backbone("fashion-source", num_classes=len(CLASSES))
        with torch.no_grad():
            backbone.model.get_classifier().weight.normal_(0, 0.5)
        out.append(backbone)
    return out


def settings_for(target: str = "builtin:digits", **kwargs):
    from autotransfer.core.settings import StudySettings

    return StudySettings(target=target, model="fashion-source", resolution=16, device="cpu", **kwargs)


def front_matter(card: str) -> tuple[dict, str]:
    """The card's YAML front matter (parsed) and the body after it."""
    assert card.startswith("---\n"), card[:80]
    head, sep, body = card[4:].partition("\n---\n")
    assert sep, "the front matter is not closed"
    return yaml.safe_load(head), body


def text_files(folder: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".safetensors"}


# -- Hugging Face front matter -------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_card_opens_with_the_front_matter_timm_writes(tmp_path, backbones, k):
    folder = save(backbones[:k], tmp_path / "model", settings_for("builtin:fashion-mnist?classes=0-2"))
    for card in (folder / "README.md", *(folder / "members").glob("*/README.md")):
        meta, body = front_matter(card.read_text())
        assert meta["tags"][:2] == ["image-classification", "timm"]
        assert meta["pipeline_tag"] == "image-classification" and meta["library_name"] == "timm"
        assert meta["license"] == "apache-2.0"  # the lab source's weights are autotransfer's own
        # the target (a builtin with a hub id) and the source's pretraining data (Fashion-MNIST too)
        assert meta["datasets"] == ["zalando-datasets/fashion_mnist"]
        assert body.startswith("# ") and "## Load it" in body


@pytest.mark.parametrize(
    ("spec", "library", "licence", "datasets"),
    [
        ("efficientnet_lite0", "timm", "apache-2.0", ["imagenet-1k"]),
        ("timm:resnet18", "timm", "apache-2.0", ["imagenet-1k"]),
        ("timm:convnext_tiny.in12k_ft_in1k", "timm", "apache-2.0", ["imagenet-12k", "imagenet-1k"]),
        ("timm:resnet18@weights.safetensors", "timm", "other", []),  # the user's own weights
        ("tv:resnet18", "pytorch", "other", []),
    ],
)
def test_front_matter_names_the_source_licence_and_data(spec, library, licence, datasets):
    from autotransfer.handback.model_card import model_card

    config = {
        "architecture": "resnet18",
        "label_names": CLASSES,
        "autotransfer": {
            "source_spec": spec,
            "library": "torchvision" if spec.startswith("tv:") else "timm",
            "settings": {"target": "builtin:elpv"},  # no hub id: not listed
        },
    }
    meta, body = front_matter(model_card(config, "model"))
    assert meta["library_name"] == library and meta["license"] == licence
    assert meta.get("datasets", []) == datasets
    assert ("timm" in meta["tags"]) == (library == "timm")
    assert "CC-BY-NC-SA-4.0" in body  # the dataset's licence, in words


# -- no path of the training machine --------------------------------------------------------------


def assert_no_machine_paths(folder: Path, *paths: Path) -> None:
    home = str(Path.home())
    assert len(home) > 1
    files = text_files(folder)
    assert {p.name for p in files} >= {"config.json", "README.md"}
    for path, text in files.items():
        for needle in (*map(str, paths), home):
            assert needle not in text, (path, needle)


def test_card_and_config_hold_no_absolute_path(tmp_path, backbones):
    """Every path-valued setting: the dataset, the unlabelled images, a surface prior, a source
    weights file, the output folder itself."""
    data, work = tmp_path / "my-data", tmp_path / "work"
    weights = tmp_path / "weights" / "source.safetensors"
    settings = settings_for(
        f"folder:{data}?n=100", unlabelled=str(tmp_path / "unlabelled"), prior=f"surface:{tmp_path / 's.json'}"
    )
    renamed = [dataclasses.replace(b, spec=f"timm:resnet18@{weights}") for b in backbones[:2]]
    record = {"unlabelled": f"folder:{tmp_path / 'unlabelled'}", "offered": 10, "kept": False, "reason": "worse"}
    folder = save(renamed, work / "model", settings, self_training=record, files={"metrics.json": "{}\n"})
    assert_no_machine_paths(folder, tmp_path, work)
    own = json.loads((folder / "config.json").read_text())["autotransfer"]
    assert own["settings"]["target"] == "folder:my-data?n=100"  # the folder's name, the options kept
    assert own["settings"]["unlabelled"] == "unlabelled" and own["settings"]["prior"] == "surface:s.json"
    assert own["source_spec"] == "timm:resnet18@source.safetensors"
    assert own["self_training"]["unlabelled"] == "folder:unlabelled"
    card = (folder / "README.md").read_text()
    assert "`folder:my-data?n=100`" in card and 'folders = ["model", "model/members/2"]' in card
    member = json.loads((folder / "members" / "2" / "config.json").read_text())["autotransfer"]
    assert member["settings"]["target"] == "folder:my-data?n=100"
    assert "local-dir:model/members/2" in (folder / "members" / "2" / "README.md").read_text()


def digits_folder(root: Path, n: int = 160) -> Path:
    """``n`` sklearn digits as PNG class folders under ``root``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(n):
        image = (digits.images[i] * (255 / 16)).astype(np.uint8)
        target = root / str(digits.target[i])
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{i:04d}.png")
    return root


def test_a_tuned_folder_dataset_leaves_no_path_and_evaluates_from_beside(tmp_path, monkeypatch):
    """A real (tiny) tune on a dataset folder: no file of the model folder holds a path of this
    machine, and ``evaluate`` with no target finds the data by its recorded name beside the folder."""
    import autotransfer
    from autotransfer.pipeline.tune import tune
    from tests.search.conftest import tiny

    data = digits_folder(tmp_path / "digits-pngs")
    settings = dataclasses.replace(tiny(), target=f"folder:{data}", n=None)
    monkeypatch.setenv("AUTOTRANSFER_CACHE", str(tmp_path / "cache"))
    result = tune(
        settings,
        study_name="digits-folder",
        storage=f"sqlite:///{tmp_path / 's.db'}",
        export_dir=tmp_path / "exports",
        runs_dir=tmp_path,
    )
    folder = result.model_path
    assert folder.parent == tmp_path
    assert_no_machine_paths(folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["autotransfer"]["settings"]["target"] == "folder:digits-pngs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    info = autotransfer.evaluate_model(folder)
    assert info.score == pytest.approx(result.test_score) and info.images == result.test_images


def test_a_dataset_found_nowhere_is_one_line_asking_for_a_target(tmp_path):
    from autotransfer.core.errors import UserError
    from autotransfer.handback.evaluate import study_test_split

    config = {"autotransfer": {"settings": {"target": "folder:gone-data"}}}
    with pytest.raises(UserError, match=r"'folder:gone-data'.*give a TARGET"):
        study_test_split(config, tmp_path / "model")


# -- file modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_every_file_of_the_folder_follows_the_umask(tmp_path, backbones, umask, mode):
    old = os.umask(umask)
    try:
        folder = save(backbones[:2], tmp_path / "model", settings_for(), files={"metrics.json": "{}\n"})
    finally:
        os.umask(old)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"config.json", "model.safetensors", "README.md", "metrics.json"}
    for path in files:
        assert (path.stat().st_mode & 0o777) == mode, path  # safetensors alone writes 0600
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        assert (path.stat().st_mode & 0o777) == mode | 0o111 & ~umask, path


# -- loading the folder in timm ------------------------------------------------------------------


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


@pytest.mark.parametrize("k", [1, 3])
def test_the_cards_timm_snippet_gives_load_models_probabilities(tmp_path, backbones, monkeypatch, k):
    import autotransfer

    folder = save(backbones[:k], tmp_path / "model", settings_for())
    card = (folder / "README.md").read_text()
    snippet = [b for b in python_blocks(card) if "timm.create_model" in b]
    assert len(snippet) == 1
    if k > 1:  # the first member alone is not the ensemble: the card says so and averages them all
        assert "members/2" in snippet[0] and "members/3" in snippet[0] and "softmax" in snippet[0]
    rng = np.random.default_rng(0)
    monkeypatch.chdir(tmp_path)  # the card's paths are relative to the folder holding the model folder
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save("image.png")
    scope: dict = {}
    exec(snippet[0], scope)
    theirs = scope["proba"].detach().numpy()
    ours = autotransfer.load_model(folder, device="cpu").predict_proba(["image.png"])
    assert theirs.shape == ours.shape == (1, len(CLASSES))
    assert np.abs(theirs - ours).max() <= 1e-4
    assert scope["label"] == CLASSES[int(ours.argmax())]


def test_the_exported_script_and_source_weights_follow_the_umask(tmp_path, backbones):
    from autotransfer.handback import script_template
    from autotransfer.handback.export import write_source_weights

    old = os.umask(0o002)
    try:
        script_template.save(torch.nn.Linear(2, 3), tmp_path / "out", CLASSES)
        weights = write_source_weights(backbones[0], tmp_path / "export" / "source.safetensors")
    finally:
        os.umask(old)
    for path in (tmp_path / "out" / "config.json", tmp_path / "out" / "model.safetensors", weights):
        assert (path.stat().st_mode & 0o777) == 0o664, path
