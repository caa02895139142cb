"""Surgery on depth groups: freeze, train_mode (BN modes), reinit, param_groups, snapshot."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch.nn.modules.batchnorm import _BatchNorm

from autotransfer.backbones import (
    create_backbone,
    freeze,
    head_params,
    param_groups,
    reinit,
    snapshot,
    train_mode,
)
from autotransfer.backbones.types import Backbone

torch.set_num_threads(1)


@pytest.fixture()
def source() -> Backbone:
    """The laboratory model: pretrained BN statistics, G = 5, 32 px."""
    return create_backbone("fashion-source", 4)


def _group_of_module(backbone: Backbone) -> dict[str, int]:
    """Module name -> depth group index for every module inside a group."""
    owner = {}
    for i, group in enumerate(backbone.groups):
        for root in group.modules:
            for sub, _ in backbone.model.get_submodule(root).named_modules():
                owner[f"{root}.{sub}" if sub else root] = i
    return owner


def _bn_modes(backbone: Backbone) -> dict[int | str, set[bool]]:
    owner = _group_of_module(backbone)
    modes: dict[int | str, set[bool]] = {}
    for name, module in backbone.model.named_modules():
        if isinstance(module, _BatchNorm):
            modes.setdefault(owner.get(name, "head"), set()).add(module.training)
    return modes


def test_freeze_sets_requires_grad(source: Backbone) -> None:
    freeze(source, 2)
    params = dict(source.model.named_parameters())
    for i, group in enumerate(source.groups):
        assert {params[n].requires_grad for n in group.params} == {i >= 2}
    assert all(params[n].requires_grad for n in head_params(source))
    freeze(source, source.num_groups)
    assert [n for n, p in source.model.named_parameters() if p.requires_grad] == head_params(source)
    freeze(source, 0)
    assert all(p.requires_grad for p in source.model.parameters())
    for bad in (-1, 6, 2.0, True):
        with pytest.raises(ValueError, match="freeze depth"):
            freeze(source, bad)


def test_train_mode_bn(source: Backbone) -> None:
    train_mode(source, 2, "adapt")
    assert source.model.training
    modes = _bn_modes(source)
    assert modes[0] == modes[1] == {False}
    assert modes[2] == modes[3] == modes[4] == {True}
    # frozen groups are fully in eval mode, trainable ones fully in train mode
    for i, group in enumerate(source.groups):
        for name in group.modules:
            assert {m.training for m in source.model.get_submodule(name).modules()} == {i >= 2}
    train_mode(source, 2, "frozen")
    assert source.model.training and source.model.get_submodule(source.head_name).training
    assert set().union(*_bn_modes(source).values()) == {False}
    train_mode(source, 0)
    assert set().union(*_bn_modes(source).values()) == {True}
    # re-initialised groups have no source statistics: their BN adapts even in frozen mode
    train_mode(source, 1, "frozen", r=2)
    modes = _bn_modes(source)
    assert modes[0] == modes[1] == modes[2] == {False} and modes[3] == modes[4] == {True}
    with pytest.raises(ValueError, match="bn_mode"):
        train_mode(source, 1, "eval")
    with pytest.raises(ValueError, match="freeze depth"):
        train_mode(source, 7)


def test_train_mode_handles_timm_batchnormact() -> None:
    lite = create_backbone("efficientnet_lite0", 3, pretrained=False)
    assert isinstance(lite.model.bn1, BatchNormAct2d)
    train_mode(lite, 3)
    modes = _bn_modes(lite)
    assert not lite.model.bn1.training
    assert modes[0] == modes[1] == modes[2] == {False}
    assert all(modes[i] == {True} for i in range(3, lite.num_groups))


def test_frozen_bn_statistics_do_not_move(source: Backbone) -> None:
    before = {k: v.clone() for k, v in source.model.state_dict().items() if "running" in k}
    train_mode(source, 3)
    source.model(torch.randn(8, 3, 32, 32))
    after = source.model.state_dict()
    frozen = {f"{m}." for g in source.groups[:3] for m in g.modules}
    for key, value in before.items():
        moved = not torch.equal(value, after[key])
        assert moved != any(key.startswith(p) for p in frozen), key


def test_reinit_changes_exactly_the_last_groups(source: Backbone) -> None:
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    reinit(source, 2, seed=0)
    after = source.model.state_dict()
    last = {f"{m}." for g in source.groups[3:] for m in g.modules}
    for key, value in state.items():
        in_last = any(key.startswith(p) for p in last)
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, after[key]) != in_last, key
        if in_last and "running_mean" in key:
            assert not after[key].any()
        if in_last and "running_var" in key:
            assert torch.equal(after[key], torch.ones_like(after[key]))
    # same seed, same weights; another seed, other weights; the global RNG is untouched
    first = {k: v.clone() for k, v in after.items()}
    rng = torch.get_rng_state()
    reinit(source, 2, seed=0)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(first[k], v) for k, v in source.model.state_dict().items())
    reinit(source, 2, seed=1)
    assert not torch.equal(first["layer4.0.conv1.weight"], source.model.state_dict()["layer4.0.conv1.weight"])
    reinit(source, 0)
    for bad in (-1, 6):
        with pytest.raises(ValueError, match="reinit depth"):
            reinit(source, bad)


def test_reinit_without_factory_uses_reset_parameters(source: Backbone) -> None:
    source.extra["factory"] = None
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    reinit(source, 1, seed=3)
    after = source.model.state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, after[key]) != key.startswith("layer4."), key


def test_param_groups_lrs_and_decay(source: Backbone) -> None:
    groups = param_groups(source, 2, lr=0.1, head_lr_mult=10.0, layer_decay=0.5, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {
        "2:layer2",
        "2:layer2/no_decay",
        "3:layer3",
        "3:layer3/no_decay",
        "4:layer4",
        "4:layer4/no_decay",
        "head",
        "head/no_decay",
    }
    assert by_name["2:layer2"]["lr"] == pytest.approx(0.025)
    assert by_name["3:layer3"]["lr"] == pytest.approx(0.05)
    assert by_name["4:layer4/no_decay"]["lr"] == pytest.approx(0.1)
    assert by_name["head"]["lr"] == pytest.approx(1.0)
    assert by_name["head"]["depth"] == source.num_groups
    for group in groups:
        if group["name"].endswith("/no_decay"):
            assert group["weight_decay"] == 0.0 and all(p.ndim == 1 for p in group["params"])
        else:
            assert group["weight_decay"] == 1e-4 and all(p.ndim > 1 for p in group["params"])
    # every trainable parameter exactly once, no frozen one
    ids = [id(p) for g in groups for p in g["params"]]
    params = dict(source.model.named_parameters())
    expected = [n for g in source.groups[2:] for n in g.params] + head_params(source)
    assert sorted(ids) == sorted(id(params[n]) for n in expected)
    # a real optimizer accepts them and a step moves only the trainable groups
    freeze(source, 2)
    train_mode(source, 2)
    optimizer = torch.optim.SGD(groups, lr=0.0, momentum=0.9)
    before = {n: p.detach().clone() for n, p in params.items()}
    loss = torch.nn.functional.cross_entropy(source.model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    moved = {n for n, p in params.items() if not torch.equal(before[n], p)}
    assert moved and moved <= set(expected)
    assert "fc.weight" in moved and not any(n.startswith(("conv1", "layer1.")) for n in moved)


def test_param_groups_full_and_validation(source: Backbone) -> None:
    groups = param_groups(source, 0, lr=0.01)
    assert [g["name"] for g in groups if not g["name"].endswith("/no_decay")] == [
        "0:stem",
        "1:layer1",
        "2:layer2",
        "3:layer3",
        "4:layer4",
        "head",
    ]
    assert {g["lr"] for g in groups} == {0.01}
    only_head = param_groups(source, 5, lr=0.01, head_lr_mult=3)
    assert {g["name"] for g in only_head} == {"head", "head/no_decay"}
    assert only_head[0]["lr"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="lr"):
        param_groups(source, 0, lr=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(source, 0, lr=0.1, weight_decay=-1)


def test_snapshot_is_a_detached_copy(source: Backbone) -> None:
    snap = snapshot(source)
    assert set(snap) == {n for g in source.groups for n in g.params}
    params = dict(source.model.named_parameters())
    assert all(torch.equal(v, params[n]) and v.data_ptr() != params[n].data_ptr() for n, v in snap.items())
    reinit(source, 1)
    assert not torch.equal(snap["layer4.1.conv2.weight"], params["layer4.1.conv2.weight"])
