"""The tuned model outside the search: a folder in timm's format, ``load_model``, ``predict``, ``evaluate``.

One tiny real study (sklearn digits, the fashion-source lab model, 16 px) is tuned once; its model
folder must load in timm with the same predictions as ``autotransfer predict``, and ``autotransfer
evaluate`` on the study's test split must reproduce the test score ``tune`` printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import autotransfer
from autotransfer.core.errors import UserError

ENTRY = Path(sys.executable).with_name("autotransfer")
needs_entry = pytest.mark.skipif(not ENTRY.exists(), reason="the autotransfer console script is not installed")


def run_cli(*args: str, cwd: Path, columns: str | None = "200") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOTRANSFER_CACHE": str(cwd / "cache")}
    env.pop("COLUMNS", None)
    if columns:
        env["COLUMNS"] = columns
    return subprocess.run([str(ENTRY), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """``(TuneResult, work folder)`` of a tiny real study."""
    from autotransfer.pipeline.tune import tune
    from tests.search.conftest import tiny

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("tuned")
    settings = tiny()  # the tiny digits study of tests/search
    result = tune(
        settings,
        study_name="digits-tiny",
        storage=f"sqlite:///{work / 's.db'}",
        export_dir=work / "exports",
        runs_dir=work / "runs",
    )
    return result, work


@pytest.fixture(scope="module")
def test_images(tuned):
    """The study's test split written as PNG files (``folder``, the files, their true class names)."""
    from autotransfer.handback.evaluate import study_test_split

    result, work = tuned
    config = json.loads((result.model_path / "config.json").read_text())
    split = study_test_split(config)
    folder = work / "test-pngs"
    folder.mkdir(exist_ok=True)
    files = []
    for i, image in enumerate(split.images):
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.asarray(image)).save(path)
        files.append(path)
    return folder, files, [split.classes[c] for c in split.labels]


def test_the_model_folder_is_timms_format_with_a_card(tuned):
    result, _ = tuned
    folder = result.model_path
    assert folder.is_dir() and folder.name == "digits-tiny"
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18"
    assert config["model_args"] == {"channels": [32, 64, 128, 256]}  # the lab model's narrow ResNet
    assert config["num_classes"] == 10 and config["label_names"] == [str(i) for i in range(10)]
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 16, 16]  # the study's resolution, not the source's 32 px
    assert cfg["mean"] == pytest.approx([0.3162] * 3) and cfg["std"] == pytest.approx([0.3574] * 3)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "center"
    own = config["autotransfer"]
    assert own["scores"]["test"] == result.test_score and own["scores"]["test_images"] == result.test_images
    assert own["protocol"] == result.best_protocol.to_dict()
    assert set(own["controls"]) == {"scratch", "probe"} and own["metric"] == "accuracy"
    assert own["settings"]["target"] == "builtin:digits" and own["dataset_fingerprint"]
    card = (folder / "README.md").read_text()
    for needle in (
        "builtin:digits",
        f"{result.test_score:.4f}",
        "95% interval",
        "from scratch",
        f'timm.create_model("local-dir:{folder.name}", pretrained=True)',  # named relative to its parent
        "autotransfer.load_model",
    ):
        assert needle in card, needle
    assert json.loads(json.dumps(result.to_dict()))["model"] == str(folder)


@needs_entry
def test_timm_local_dir_predicts_as_autotransfer_predict(tuned, test_images):
    import timm

    result, work = tuned
    folder, files, _ = test_images
    done = run_cli(
        "predict", str(result.model_path), str(folder), "--format", "json", "--top-k", "10", "--device", "cpu", cwd=work
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert [Path(p["path"]).name for p in out["predictions"]] == [f.name for f in files]
    assert out["skipped"] == []
    ours = np.array(
        [
            [dict((t["class"], t["probability"]) for t in p["top"])[str(c)] for c in range(10)]
            for p in out["predictions"]
        ]
    )

    # the handed-back model is an ensemble (the default pick): timm reads each member folder, and
    # the mean of their softmax is what autotransfer predicts
    config = json.loads((result.model_path / "config.json").read_text())
    members = config["autotransfer"]["ensemble"]["members"]
    assert len(members) == 3 and members[0] == "."
    theirs = 0
    for member in members:
        model = timm.create_model(f"local-dir:{(result.model_path / member).resolve()}", pretrained=True).eval()
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        with torch.no_grad():
            logits = model(torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))
        theirs = theirs + torch.softmax(logits, 1).numpy() / len(members)
        assert model.pretrained_cfg["label_names"] == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # and the library gives the same from paths, PIL images and arrays
    predictor = autotransfer.load_model(result.model_path, device="cpu")
    arrays = [np.asarray(Image.open(f)) for f in files]
    expected = predictor.classes_[theirs.argmax(1)]
    for images in (files, [str(f) for f in files], [Image.open(f) for f in files], arrays, np.stack(arrays)):
        np.testing.assert_array_equal(predictor.predict(images), expected)
    np.testing.assert_allclose(predictor.predict_proba(files), theirs, atol=1e-5)


@needs_entry
def test_evaluate_reproduces_the_test_score_tune_printed(tuned):
    result, work = tuned
    done = run_cli("evaluate", str(result.model_path), "--format", "json", "--device", "cpu", cwd=work)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout)
    assert info["metric"] == "accuracy"
    assert info["score"] == pytest.approx(result.test_score, abs=1e-12)
    assert info["images"] == result.test_images
    assert info["low"] <= info["score"] <= info["high"] and info["interval_95"] == [info["low"], info["high"]]
    confusion = np.array(info["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == result.test_images
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result.test_score)
    assert [c["class"] for c in info["per_class"]] == [str(i) for i in range(10)]
    assert sum(c["support"] for c in info["per_class"]) == result.test_images
    for row, c in zip(confusion, info["per_class"]):
        assert c["recall"] == pytest.approx(row[int(c["class"])] / row.sum())


def test_evaluate_info_on_a_folder_subset_with_a_bad_file_and_html(tuned, test_images, tmp_path):
    from autotransfer.handback.evaluate import evaluate_model
    from autotransfer.report.evaluation import write_evaluation_html

    result, _ = tuned
    folder, files, truth = test_images
    tree = tmp_path / "tree"
    for f, name in zip(files, truth):
        if name in ("3", "7"):
            (tree / name).mkdir(parents=True, exist_ok=True)
            (tree / name / f.name).write_bytes(f.read_bytes())
    (tree / "3" / "broken.png").write_bytes(b"not a png")
    info = evaluate_model(result.model_path, f"folder:{tree}")
    assert info.images == truth.count("3") + truth.count("7") and info.skipped == 1
    assert [info.support[i] for i in (3, 7)] == [truth.count("3"), truth.count("7")]
    assert sum(info.support) == info.images
    page = write_evaluation_html(info, tmp_path / "eval.html", result.model_path).read_text()
    assert "confusion matrix" in page and "plotly" in page


@needs_entry
def test_bad_inputs_are_skipped_counted_or_one_line(tuned, test_images, tmp_path):
    result, work = tuned
    folder, files, _ = test_images
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in files[:3]:
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "truncated.png").write_bytes(files[0].read_bytes()[:20])
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\nmixed/000.png\nmixed/gone.png\n")
    # a folder, a manifest and a missing file: unreadable ones skipped and counted, on stderr
    done = run_cli(
        "predict",
        str(result.model_path),
        str(mixed),
        str(manifest),
        str(tmp_path / "nope.png"),
        "--format",
        "csv",
        "--top-k",
        "2",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "path,class_1,probability_1,class_2,probability_2"
    assert len(lines) == 1 + 3 + 1  # 3 images of the folder, 1 of the manifest
    assert "skipped 4 file(s)" in done.stderr  # notes.txt, truncated.png, gone.png, nope.png
    # classes the model does not know: one line, exit 2
    (tmp_path / "cats" / "cat").mkdir(parents=True)
    (tmp_path / "cats" / "dog").mkdir(parents=True)
    for name in ("cat", "dog"):
        (tmp_path / "cats" / name / "a.png").write_bytes(files[0].read_bytes())
    done = run_cli("evaluate", str(result.model_path), f"folder:{tmp_path / 'cats'}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "do not match the model's" in lines[0] and "'cat'" in lines[0], done.stderr
    # not a model folder: one line, exit 2
    done = run_cli("predict", str(tmp_path), str(mixed), cwd=tmp_path)
    assert done.returncode == 2 and "has no config.json" in done.stderr and "Traceback" not in done.stderr
    # nothing readable at all: one line, exit 2
    done = run_cli("predict", str(result.model_path), str(mixed / "notes.txt"), "--device", "cpu", cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "no readable images" in lines[0], done.stderr


@needs_entry
def test_piped_tables_keep_their_full_width_and_version(tuned, test_images, tmp_path):
    result, _ = tuned
    _, files, _ = test_images
    deep = tmp_path / ("a-very-long-folder-name-" * 4) / "inner"
    deep.mkdir(parents=True)
    (deep / "image.png").write_bytes(files[0].read_bytes())
    done = run_cli("predict", str(result.model_path), str(deep), "--device", "cpu", cwd=tmp_path, columns=None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(deep / "image.png") in done.stdout  # not cut at 80 columns
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"autotransfer {autotransfer.__version__}"


def test_library_input_errors_name_the_input(tuned, tmp_path):
    result, _ = tuned
    predictor = autotransfer.load_model(result.model_path, device="cpu")
    assert list(predictor.classes_) == [str(i) for i in range(10)]
    with pytest.raises(UserError, match="not a readable image"):
        (tmp_path / "x.png").write_text("text")
        predictor.predict([tmp_path / "x.png"])
    with pytest.raises(UserError, match="dtype"):
        predictor.predict([np.zeros((8, 8), dtype=bool)])
    with pytest.raises(UserError, match="shape"):
        predictor.predict([np.zeros((8, 8, 2), dtype=np.uint8)])
    with pytest.raises(UserError, match="model folder not found"):
        autotransfer.load_model(tmp_path / "absent")


def test_create_backbone_reads_a_model_folder(tuned):
    from autotransfer.backbones import create_backbone

    result, _ = tuned
    predictor = autotransfer.load_model(result.model_path, device="cpu")
    backbone = create_backbone(str(result.model_path), num_classes=3)
    assert backbone.extra["source_classes"] == [str(i) for i in range(10)]
    assert backbone.preprocessing.input_size == 16
    trained = predictor.model.state_dict()
    for name, value in backbone.model.state_dict().items():
        if not name.startswith("fc."):
            torch.testing.assert_close(value, trained[name])  # the fine-tuned weights are the new source
    torch.testing.assert_close(backbone.source_head.weight, trained["fc.weight"])


def test_builtin_lite_weights_are_written_under_timms_tf_name(tmp_path):
    import timm

    from autotransfer.backbones import create_backbone
    from autotransfer.backbones.model_dir import write_model_dir

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", num_classes=3)
    with torch.no_grad():
        backbone.model.get_classifier().weight.normal_(0, 0.05)
    write_model_dir(backbone, tmp_path / "lite", label_names=["a", "b", "c"], input_size=32)
    config = json.loads((tmp_path / "lite" / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0"  # timm's efficientnet_lite0 is another network
    assert config["pretrained_cfg"]["mean"] == [0.5] * 3
    model = timm.create_model(f"local-dir:{tmp_path / 'lite'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone.model.eval()(x))
    predictor = autotransfer.load_model(tmp_path / "lite", device="cpu")
    assert list(predictor.classes_) == ["a", "b", "c"]


def test_torchvision_backbones_write_a_folder_autotransfer_loads(tmp_path):
    from autotransfer.backbones import create_backbone
    from autotransfer.backbones.model_dir import write_model_dir

    torch.manual_seed(0)
    backbone = create_backbone("tv:resnet18", num_classes=2, pretrained=False)
    with torch.no_grad():
        backbone.model.fc.weight.normal_(0, 0.05)
    write_model_dir(backbone, tmp_path / "tv", label_names=["no", "yes"], input_size=24)
    config = json.loads((tmp_path / "tv" / "config.json").read_text())
    assert config["autotransfer"]["library"] == "torchvision" and config["architecture"] == "resnet18"
    predictor = autotransfer.load_model(tmp_path / "tv", device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    x = (
        torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
        - torch.tensor(backbone.preprocessing.mean).view(1, 3, 1, 1)
    ) / torch.tensor(backbone.preprocessing.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(backbone.model.eval()(x), 1).numpy()
    np.testing.assert_allclose(predictor.predict_proba([image]), expected, atol=1e-5)


def test_evaluate_without_target_refuses_changed_data(tuned, tmp_path):
    import shutil

    from autotransfer.handback.evaluate import evaluate_model

    result, _ = tuned
    copy = tmp_path / "copy"
    shutil.copytree(result.model_path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["autotransfer"]["dataset_fingerprint"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="fingerprint"):
        evaluate_model(copy)
