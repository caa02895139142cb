"""``autotransfer export-model DIR --format onnx``: one ONNX graph per model folder, and the ``.onnx``
file as a predictor (``load_model``, ``predict``, ``evaluate``) with the folder's own preprocessing.

The folders are real model folders (``save_tuned_ensemble``) of the lab's narrow ResNet at 16 px
whose heads are fitted to sklearn's digits, so the graph is checked on real, decided predictions.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import autotransfer
from autotransfer.core.errors import UserError

pytest.importorskip("onnxruntime")  # the [onnx] extra: CI installs it (.ci/setup)

CLASSES = [str(i) for i in range(10)]
SIZE = 16


@pytest.fixture(scope="module")
def digits():
    """200 real images of builtin:digits (``(H, W, 3)`` uint8) and their true class names."""
    from autotransfer.data import load_dataset

    dataset = load_dataset("builtin:digits?n=400&seed=0")
    images = [np.asarray(image) for image in dataset.images]
    names = [dataset.classes[c] for c in dataset.labels]
    return images, names


def fitted_backbones(count: int, images, names) -> list:
    """``count`` narrow ResNets (the fashion-source lab model) whose heads are ridge fits to digits'
    features on the other 200 images, each on a different half: real, different members."""
    from autotransfer.backbones import create_backbone
    from autotransfer.data.cache import resize_square

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        backbone = create_backbone("fashion-source", num_classes=len(CLASSES))
        model = backbone.model.eval()
        pick = rng.choice(len(images), size=len(images) // 2, replace=False)
        x = torch.from_numpy(np.stack([resize_square(images[i], SIZE) for i in pick])).permute(0, 3, 1, 2).float()
        mean = torch.tensor(backbone.preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(backbone.preprocessing.std).view(1, 3, 1, 1)
        with torch.no_grad():
            features = model.forward_head(model.forward_features((x / 255 - mean) / std), pre_logits=True)
        target = torch.nn.functional.one_hot(torch.tensor([int(names[i]) for i in pick]), len(CLASSES)).float()
        ones = torch.ones(len(features), 1)
        design = torch.cat([features, ones], 1)
        solution = torch.linalg.solve(design.T @ design + 1.0 * torch.eye(design.shape[1]), design.T @ (8 * target))
        head = model.get_classifier()
        with torch.no_grad():
            head.weight.copy_(solution[:-1].T)
            head.bias.copy_(solution[-1])
        out.append(backbone)
    return out


def save_folder(backbones, directory: Path) -> Path:
    from autotransfer.core.protocol import Protocol
    from autotransfer.core.settings import StudySettings
    from autotransfer.handback.model_card import save_tuned_ensemble

    settings = StudySettings(target="builtin:digits", model="fashion-source", resolution=SIZE, device="cpu")
    members = [
        (b, Protocol(), {"trial": i, "val_score": 0.5, "test_score": 0.5, "trained_on": "train+val"})
        for i, b in enumerate(backbones)
    ]
    return save_tuned_ensemble(
        members, directory, settings, classes=CLASSES, test_score=0.5, test_images=10, versions={}
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory, digits):
    """``{"single": folder, "ensemble": folder of 3}`` and the 200 images the heads never saw."""
    images, names = digits
    backbones = fitted_backbones(3, images[200:], names[200:])
    root = tmp_path_factory.mktemp("onnx")
    return {
        "single": save_folder(backbones[:1], root / "single"),
        "ensemble": save_folder(backbones, root / "ensemble"),
    }


@pytest.fixture(scope="module")
def exported(folders, tmp_path_factory):
    """Each folder exported once: ``{kind: path of the .onnx file}``."""
    from autotransfer.handback.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("exported")
    return {kind: export_onnx(folder, root / f"{kind}.onnx").path for kind, folder in folders.items()}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The CLI in this process: ``(exit code, stdout, stderr)``."""
    from autotransfer import cli

    handler = signal.getsignal(signal.SIGTERM)
    code = 0
    try:
        cli.app(args, prog_name="autotransfer")
    except SystemExit as done:
        code = int(done.code or 0)
    finally:
        signal.signal(signal.SIGTERM, handler)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# -- parity ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_the_onnx_file_predicts_as_the_model_folder(kind, folders, exported, digits):
    images, names = digits
    test_images, test_names = images[:200], names[:200]
    ours = autotransfer.load_model(folders[kind], device="cpu").predict_proba(test_images)
    predictor = autotransfer.load_model(exported[kind], device="cpu")
    theirs = predictor.predict_proba(test_images)
    assert theirs.shape == (200, 10) and theirs.dtype == np.float32
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    assert np.abs(ours - theirs).max() <= 1e-4
    assert list(predictor.classes_) == CLASSES
    # the heads are real: far above chance on images they were not fitted to
    assert np.mean(predictor.predict(test_images) == np.asarray(test_names)) > 0.5


def test_an_ensemble_is_one_graph_averaging_its_members(folders, exported, digits):
    import onnx

    images, _ = digits
    model = onnx.load(str(exported["ensemble"]))
    assert len(model.graph.input) == 1 and model.graph.input[0].name == "pixel_values"
    assert [o.name for o in model.graph.output] == ["probabilities"]
    # one graph: no external data files, and the graph holds all three members' weights
    assert sorted(p.name for p in exported["ensemble"].parent.iterdir()) == ["ensemble.onnx", "single.onnx"]
    single = onnx.load(str(exported["single"]))
    count = lambda m: sum(int(np.prod(t.dims)) for t in m.graph.initializer)  # noqa: E731
    assert count(model) > 2.5 * count(single)
    # the members' mean softmax, member by member (each member folder's network alone)
    from autotransfer.backbones.model_dir import build_model, ensemble_member_dirs
    from autotransfer.handback.predict import Predictor

    whole = autotransfer.load_model(folders["ensemble"], device="cpu")
    dirs = ensemble_member_dirs(folders["ensemble"])
    assert [d.name for d in dirs] == ["ensemble", "2", "3"]
    members = [Predictor(build_model(d), CLASSES, whole.preprocessing, device="cpu") for d in dirs]
    mean = np.mean([m.predict_proba(images[:50]) for m in members], axis=0)
    assert np.abs(members[0].predict_proba(images[:50]) - mean).max() > 1e-2  # the members differ
    np.testing.assert_allclose(
        autotransfer.load_model(exported["ensemble"]).predict_proba(images[:50]), mean, atol=1e-4
    )


def test_the_graph_has_a_dynamic_batch_and_its_metadata(exported, folders):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(exported["ensemble"]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["autotransfer.classes"]) == CLASSES
    pre = json.loads(meta["autotransfer.preprocessing"])
    config = json.loads((folders["ensemble"] / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert pre["input_size"] == [3, SIZE, SIZE] and pre["mean"] == cfg["mean"] and pre["std"] == cfg["std"]
    assert pre["interpolation"] == "bicubic" and pre["crop_pct"] == 1.0 and pre["crop_mode"] == "center"
    assert meta["autotransfer.version"] == autotransfer.__version__
    assert json.loads(meta["autotransfer.model"])["members"] == 3
    assert json.loads(meta["autotransfer.model"])["kind"] == "ensemble"
    assert json.loads(meta["autotransfer.config"])["label_names"] == CLASSES
    single = {p.key: p.value for p in onnx.load(str(exported["single"])).metadata_props}
    assert json.loads(single["autotransfer.model"])["kind"] == "single"
    # any batch size runs, in plain onnxruntime, with no autotransfer at all
    session = ort.InferenceSession(str(exported["single"]), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        out = session.run(["probabilities"], {"pixel_values": np.zeros((batch, 3, SIZE, SIZE), np.float32)})[0]
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)


# -- the CLI ---------------------------------------------------------------------------------------


def test_export_model_then_predict_and_evaluate_the_onnx_file(folders, tmp_path, digits, capsys):
    images, names = digits
    out = tmp_path / "model.onnx"
    code, stdout, stderr = run_cli(["export-model", str(folders["single"]), "--format", "onnx", "-o", str(out)], capsys)
    assert code == 0, stderr
    assert out.is_file() and str(out) in stdout and "single network" in stdout
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, image in enumerate(images[:5]):
        Image.fromarray(image).save(pngs / f"{i}.png")
    code, stdout, stderr = run_cli(["predict", str(out), str(pngs), "--format", "json", "--top-k", "10"], capsys)
    assert code == 0, stderr
    predictions = json.loads(stdout)["predictions"]
    got = np.array([[dict((t["class"], t["probability"]) for t in p["top"])[c] for c in CLASSES] for p in predictions])
    expected = autotransfer.load_model(folders["single"], device="cpu").predict_files(sorted(pngs.iterdir())).proba
    np.testing.assert_allclose(got, expected, atol=1e-4)
    code, stdout, stderr = run_cli(["evaluate", str(out), "builtin:digits?n=100&seed=1", "--format", "json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["images"] == 100 and json.loads(stdout)["score"] > 0.5


@pytest.mark.parametrize("case", ["missing folder", "output folder missing", "not a model folder", "not .onnx"])
def test_bad_paths_are_one_line_exit_2(case, folders, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    source, output, needle = {
        "missing folder": (tmp_path / "absent", tmp_path / "m.onnx", "model folder not found"),
        "output folder missing": (folders["single"], tmp_path / "nowhere" / "m.onnx", "nowhere"),
        "not a model folder": (tmp_path / "plain", tmp_path / "m.onnx", "has no config.json"),
        "not .onnx": (folders["single"], tmp_path / "m.bin", ".onnx"),
    }[case]
    code, _, stderr = run_cli(["export-model", str(source), "--format", "onnx", "-o", str(output)], capsys)
    assert code == 2
    assert needle in one_error_line(stderr)
    assert not output.exists()


def test_a_missing_or_broken_onnx_file_is_one_line_exit_2(tmp_path, capsys):
    code, _, stderr = run_cli(["predict", str(tmp_path / "absent.onnx"), str(tmp_path)], capsys)
    assert code == 2 and "absent.onnx" in one_error_line(stderr)
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    code, _, stderr = run_cli(["predict", str(tmp_path / "junk.onnx"), str(tmp_path)], capsys)
    assert code == 2 and "junk.onnx" in one_error_line(stderr)


def test_without_the_extra_onnx_is_one_line_naming_it(folders, tmp_path, monkeypatch, capsys):
    for name in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    code, _, stderr = run_cli(
        ["export-model", str(folders["single"]), "--format", "onnx", "-o", str(tmp_path / "m.onnx")], capsys
    )
    assert code == 2 and "pip install 'autotransfer[onnx]'" in one_error_line(stderr)
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match=r"pip install 'autotransfer\[onnx\]'"):
        autotransfer.load_model(tmp_path / "m.onnx")
