"""Depth groups across timm and torchvision families: counts, names, coverage, contiguity, chaining."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from torchvision.models import VisionTransformer

from autotransfer.backbones import create_backbone, describe_groups, group_outputs, run_groups, wrap_model
from autotransfer.backbones.types import Backbone

torch.set_num_threads(1)

LITE_NAMES = ["stem"] + [f"blocks.{i}" for i in range(6)] + ["blocks.6+conv_head+bn2"]
RESNET_NAMES = ["stem", "layer1", "layer2", "layer3", "layer4"]

# spec -> (adapter, G, group names or None, chain)
CASES = {
    "timm:tf_efficientnet_lite0": ("timm", 8, LITE_NAMES, True),
    "timm:resnet18": ("timm", 5, RESNET_NAMES, True),
    "timm:mobilenetv3_small_050": ("timm", 7, ["stem"] + [f"blocks.{i}" for i in range(6)], True),
    "timm:convnext_atto": ("timm", 5, ["stem", "stages.0", "stages.1", "stages.2", "stages.3"], True),
    "tv:resnet18": ("torchvision:resnet", 5, RESNET_NAMES, True),
    "tv:efficientnet_b0": ("torchvision:efficientnet", 9, ["stem"] + [f"features.{i}" for i in range(1, 9)], True),
    "tv:mobilenet_v3_small": ("torchvision:mobilenet_v3", 13, None, True),
    "tv:convnext_tiny": (
        "torchvision:convnext",
        5,
        ["stem", "features.1", "features.2+features.3", "features.4+features.5", "features.6+features.7"],
        True,
    ),
}


@pytest.fixture(scope="module")
def built() -> dict[str, Backbone]:
    return {spec: create_backbone(spec, 3, pretrained=False) for spec in CASES}


def tiny_tv_vit() -> Backbone:
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=6, num_heads=2, hidden_dim=32, mlp_dim=64)
    return wrap_model(model, 3, spec="tv:vit-tiny-test")


def tiny_timm_vit() -> Backbone:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4)
    return wrap_model(model, 3, spec="timm:vit-tiny-test")


def assert_partition(backbone: Backbone) -> None:
    """Every non-head parameter in exactly one group; groups contiguous; head excluded."""
    model = backbone.model
    order = [n for n, _ in model.named_parameters()]
    owner: dict[str, int] = {}
    for i, group in enumerate(backbone.groups):
        assert group.params, f"group {group.name} is empty"
        assert group.modules, f"group {group.name} has no modules"
        for name in group.params:
            assert name not in owner, f"{name} in two groups"
            owner[name] = i
    head = [n for n in order if n not in owner]
    assert head, "the head must own parameters"
    assert all(not n.startswith(backbone.head_name + ".") for n in owner), "head parameters inside a group"
    assert {f"{backbone.head_name}.weight", f"{backbone.head_name}.bias"} <= set(head)
    sequence = [owner[n] for n in order if n in owner]
    assert sequence == sorted(sequence), "groups are not contiguous in parameter order"
    # each group's params are exactly the params under its modules (plus root-level ones)
    for group in backbone.groups:
        under = {f"{m}.{n}" for m in group.modules for n, _ in model.get_submodule(m).named_parameters()}
        assert under <= set(group.params)
    # the new head is zero-initialised
    head_module = model.get_submodule(backbone.head_name)
    assert head_module.out_features == 3
    assert not head_module.weight.any() and not head_module.bias.any()


@pytest.mark.parametrize("spec", list(CASES))
def test_groups_per_family(built: dict[str, Backbone], spec: str) -> None:
    adapter, count, names, chain = CASES[spec]
    backbone = built[spec]
    assert backbone.adapter == adapter
    assert backbone.num_groups == count
    if names is not None:
        assert [g.name for g in backbone.groups] == names
    assert backbone.chain is chain
    assert_partition(backbone)
    assert backbone.source_head is not None and backbone.source_head.out_features == 1000
    counts = describe_groups(backbone)
    assert [n for n, _ in counts] == [g.name for g in backbone.groups]
    params = dict(backbone.model.named_parameters())
    assert [c for _, c in counts] == [sum(params[n].numel() for n in g.params) for g in backbone.groups]


def test_named_members(built: dict[str, Backbone]) -> None:
    lite = built["timm:tf_efficientnet_lite0"]
    assert lite.groups[0].modules[:2] == ["conv_stem", "bn1"]
    assert lite.groups[-1].modules == ["blocks.6", "conv_head", "bn2"]
    assert all(not n.startswith("classifier") for g in lite.groups for n in g.params)
    resnet = built["timm:resnet18"]
    assert resnet.groups[0].modules == ["conv1", "bn1", "act1", "maxpool"]
    assert [g.modules for g in resnet.groups[1:]] == [["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    tv_resnet = built["tv:resnet18"]
    assert tv_resnet.groups[0].modules == ["conv1", "bn1", "relu", "maxpool"]
    assert tv_resnet.head_name == "fc"
    mbv3 = built["timm:mobilenetv3_small_050"]
    assert "conv_head.weight" not in {n for g in mbv3.groups for n in g.params}  # timm puts it in the head
    assert built["tv:mobilenet_v3_small"].head_name == "classifier.3"
    assert built["tv:convnext_tiny"].groups[2].modules == ["features.2", "features.3"]
    assert built["timm:convnext_atto"].head_name == "head.fc"


def _randomise_head(backbone: Backbone) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in backbone.model.get_submodule(backbone.head_name).parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("spec", [s for s, case in CASES.items() if case[3]])
def test_chain_reproduces_forward(built: dict[str, Backbone], spec: str) -> None:
    backbone = built[spec]
    _randomise_head(backbone)  # a zero head would make any comparison pass
    model = backbone.model.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
        chained = backbone.forward_head(run_groups(backbone, x, 0, backbone.num_groups))
        split = run_groups(backbone, run_groups(backbone, x, 0, 2), 2, backbone.num_groups)
        per_group = group_outputs(backbone, x)
        hooked = group_outputs(dataclasses.replace(backbone, chain=False), x)
    assert reference.abs().max() > 0
    torch.testing.assert_close(chained, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(backbone.forward_head(split), reference, rtol=1e-4, atol=1e-5)
    assert len(per_group) == backbone.num_groups
    for a, b in zip(per_group, hooked):
        assert a.dim() == 4
        torch.testing.assert_close(a, b)


def test_torchvision_vit_groups() -> None:
    backbone = tiny_tv_vit()
    assert backbone.adapter == "torchvision:vit"
    assert backbone.num_groups == 5
    assert backbone.chain is False
    assert [g.name for g in backbone.groups] == [
        "stem",
        "encoder.layers.0-1",
        "encoder.layers.2-3",
        "encoder.layers.4",
        "encoder.layers.5+encoder.ln",
    ]
    stem = backbone.groups[0]
    assert {"class_token", "encoder.pos_embedding", "conv_proj.weight"} <= set(stem.params)
    assert backbone.groups[-1].params[-2:] == ["encoder.ln.weight", "encoder.ln.bias"]
    assert_partition(backbone)
    with torch.no_grad():
        outs = group_outputs(backbone, torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 17, 32)] * 5
    _randomise_head(backbone)
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(backbone.forward_head(group_outputs(backbone, x)[-1]), backbone.model(x))
    with pytest.raises(ValueError, match="does not chain"):
        run_groups(backbone, torch.randn(1, 3, 32, 32), 0, 1)


def test_timm_vit_groups() -> None:
    backbone = tiny_timm_vit()
    assert backbone.adapter == "timm"
    assert backbone.num_groups == 5  # stem + 4 blocks, the final norm with the last
    assert backbone.groups[-1].name == "blocks.3+norm"
    assert {"cls_token", "pos_embed"} <= set(backbone.groups[0].params)
    assert backbone.chain is False
    assert_partition(backbone)
    with torch.no_grad():
        outs = group_outputs(backbone, torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 17, 192)] * 5


def test_fallback_for_other_families() -> None:
    backbone = create_backbone("tv:regnet_y_400mf", 3, pretrained=False)
    assert backbone.adapter == "fallback"
    assert [g.name for g in backbone.groups] == ["stem"] + [f"trunk_output.block{i}" for i in range(1, 5)]
    assert backbone.chain is True
    assert_partition(backbone)


def test_run_groups_validates_range(built: dict[str, Backbone]) -> None:
    backbone = built["timm:resnet18"]
    x = torch.randn(1, 3, 32, 32)
    assert run_groups(backbone, x, 0, 0) is x
    for start, stop in [(-1, 2), (3, 2), (0, 6)]:
        with pytest.raises(ValueError, match="start"):
            run_groups(backbone, x, start, stop)
