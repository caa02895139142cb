"""Source-free divergence: target activation statistics vs a model's stored BatchNorm statistics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.train.config import module_device

__all__ = [
    "BNDivergence",
    "NoBatchNormError",
    "batchnorm_layers",
    "bn_divergence",
    "reestimate_bn_stats",
]

_NO_BN_MESSAGE = "model has no BatchNorm layers: give a source sample (--source) to measure divergence"


class NoBatchNormError(UserError, ValueError):
    """The model carries no BatchNorm running statistics, so a source sample is needed."""


@dataclass(frozen=True)
class BNDivergence:
    """Per-layer source-free divergence (see :func:`bn_divergence` for the formula).

    Attributes:
        layers: BatchNorm module names, in the order the forward pass first reached them.
        per_layer: ``(L,)`` divergence of each layer in ``layers``.
        per_group: ``(G,)`` mean of ``per_layer`` over the layers of each group of
            ``layer_groups``, NaN for a group without a BatchNorm layer; None when no groups
            were given.
        n_images: number of target images seen.
    """

    layers: list[str]
    per_layer: np.ndarray
    per_group: np.ndarray | None
    n_images: int

    @property
    def mean(self) -> float:
        """Mean over all layers."""
        return float(np.mean(self.per_layer))


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every BatchNorm layer with running statistics, in module order.

    Covers ``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and subclasses such as timm's
    ``BatchNormAct2d``, and frozen BatchNorm (timm / torchvision ``FrozenBatchNorm2d``).
    """
    return [
        (name, module)
        for name, module in model.named_modules()
        if _is_batchnorm(module)
        and isinstance(getattr(module, "running_mean", None), torch.Tensor)
        and isinstance(getattr(module, "running_var", None), torch.Tensor)
    ]


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or "FrozenBatchNorm" in type(module).__name__


def _has_any_batchnorm(model: nn.Module) -> bool:
    return any(_is_batchnorm(m) for m in model.modules())


def _require_batchnorm(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = batchnorm_layers(model)
    if not layers:
        if _has_any_batchnorm(model):
            raise NoBatchNormError(
                "model has no BatchNorm layers with running statistics: give a source sample "
                "(--source) to measure divergence"
            )
        raise NoBatchNormError(_NO_BN_MESSAGE)
    return layers


def _images(batch) -> torch.Tensor:
    """The image tensor of a batch: the batch itself, or the first item of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise InvalidValueError(
            f"batches must yield tensors (B, 3, H, W) or (images, ...) tuples, but got {type(batch)!r}"
        )
    return batch


class _Moments:
    """Streaming per-channel sum and sum of squares, accumulated in float64.

    Each image's channel sums are taken in the activation's precision (float32 at least,
    cascade summation: ~1e-7 relative) and added up in float64, so the result does not
    depend on how the images are batched. Two plain reductions cost about a third of
    ``torch.var_mean`` here, which matters: the hooks see every BatchNorm input.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | float = 0.0
        self.total_sq: torch.Tensor | float = 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):  # half precision (autocast)
            x = x.float()
        flat = x.reshape(x.shape[0], x.shape[1], -1)  # (B, C, positions)
        self.total = self.total + flat.sum(2).to(torch.float64).sum(0)
        self.total_sq = self.total_sq + (flat * flat).sum(2).to(torch.float64).sum(0)
        self.count += flat.shape[0] * flat.shape[2]

    @property
    def mean(self) -> torch.Tensor:
        # read after the first update, which makes the sums tensors
        return cast(torch.Tensor, self.total / self.count)

    @property
    def var(self) -> torch.Tensor:
        """Population variance (divides by the count)."""
        return (self.total_sq / self.count - self.mean**2).clamp_min(0.0)


def _save_training_flags(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


def _restore_training_flags(flags: dict[nn.Module, bool]) -> None:
    for module, training in flags.items():
        module.training = training


def _group_means(layers: list[str], values: np.ndarray, layer_groups: Sequence[Sequence[str]]) -> np.ndarray:
    def in_group(name: str, prefixes: Sequence[str]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    if isinstance(layer_groups, str) or any(isinstance(g, str) for g in layer_groups):
        raise InvalidValueError(
            f"layer_groups must be a list of lists of module-name prefixes, but got {layer_groups!r}"
        )
    membership = np.zeros((len(layer_groups), len(layers)), dtype=bool)
    for g, prefixes in enumerate(layer_groups):
        membership[g] = [in_group(name, prefixes) for name in layers]
    ambiguous = [layers[i] for i in np.flatnonzero(membership.sum(0) > 1)]
    if ambiguous:
        raise InvalidValueError(f"BatchNorm layers {ambiguous!r} match more than one group of layer_groups")
    return np.array([values[row].mean() if row.any() else np.nan for row in membership])


@torch.no_grad()
def bn_divergence(
    model: nn.Module,
    batches: Iterable,
    *,
    layer_groups: Sequence[Sequence[str]] | None = None,
) -> BNDivergence:
    """Divergence of target images from the source, read off the model's BatchNorm statistics.

    Forward pre-hooks on every BatchNorm layer accumulate, over all ``batches`` (model in
    eval mode, no grad), the per-channel mean ``μ_t`` and population variance ``σ_t²`` of
    the layer's INPUT (streaming sums and sums of squares in float64, independent of the
    batching). Each layer ``l`` is compared with its stored source statistics
    ``μ_s = running_mean``, ``σ_s² = running_var`` by the per-channel Gaussian W₂²
    between ``N(μ_t, σ_t²)`` and ``N(μ_s, σ_s²)``, normalised by the source variance and
    averaged over channels:

        ``D_l = mean_c [ (μ_t,c - μ_s,c)² + (σ_t,c - σ_s,c)² ] / (σ_s,c² + ε_l)``

    with ``ε_l`` the layer's own ``eps`` (the variance BN itself divides by). ``D_l`` is
    0 when the target matches the source statistics and 1 for, e.g., a shift of one source
    standard deviation. Measure at the model's native input size, or the resolution change
    is mixed into the domain change.

    Args:
        model: a network with BatchNorm layers (their running stats are the source).
        batches: iterable of preprocessed float tensors ``(B, 3, H, W)``, or of tuples whose
            first item is such a tensor (a DataLoader); moved to the model's device.
        layer_groups: optional module-name prefixes per depth group (e.g.
            ``[g.modules for g in backbone.groups]``); a layer belongs to a group when its
            name equals a prefix or starts with ``prefix + "."``.

    Returns:
        :class:`BNDivergence` with per-layer values in forward order and, with
        ``layer_groups``, per-group means.

    Raises:
        NoBatchNormError: (a ``ValueError`` and a ``UserError``) if the model has no BatchNorm
            layer with running statistics.
        ValueError: if ``batches`` is empty or a layer matches two groups.
    """
    named = _require_batchnorm(model)
    order: list[str] = []
    moments: dict[str, _Moments] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if name not in moments:
                order.append(name)
                moments[name] = _Moments()
            moments[name].update(args[0])

        return hook

    device = module_device(model)
    flags = _save_training_flags(model)
    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in named]
    n_images = 0
    try:
        model.eval()
        for batch in batches:
            x = _images(batch).to(device)
            model(x)
            n_images += x.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        _restore_training_flags(flags)
    if n_images == 0:
        raise InvalidValueError("batches yielded no images: give at least one batch of target images")
    if not order:
        raise InvalidValueError("no BatchNorm layer of the model ran on the batches")

    modules = dict(named)
    values = []
    for name in order:
        bn, stats = modules[name], moments[name]
        # batchnorm_layers() keeps only modules whose running statistics are tensors
        running_mean, running_var = cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var)
        mu_s = running_mean.detach().to(stats.mean.device, torch.float64)
        var_s = running_var.detach().to(stats.mean.device, torch.float64).clamp_min(0.0)
        sd_t = stats.var.clamp_min(0.0).sqrt()
        w2 = (stats.mean - mu_s) ** 2 + (sd_t - var_s.sqrt()) ** 2
        eps = float(cast(float, bn.eps))
        values.append(float((w2 / (var_s + eps)).mean()))
    per_layer = np.asarray(values, dtype=np.float64)
    per_group = None if layer_groups is None else _group_means(order, per_layer, layer_groups)
    return BNDivergence(layers=order, per_layer=per_layer, per_group=per_group, n_images=n_images)


@torch.no_grad()
def reestimate_bn_stats(model: nn.Module, batches: Iterable) -> None:
    """Replace every BatchNorm layer's running statistics by their average over ``batches``.

    Each trainable BatchNorm layer gets ``momentum=None`` (cumulative average) and reset
    statistics; the model runs under no grad with only its BatchNorm layers in train mode
    (dropout and drop-path stay off); momenta and train/eval flags are restored afterwards.
    The stored variance is the average of per-batch (unbiased) variances, as in PyTorch.

    Args:
        model: a network with BatchNorm layers.
        batches: iterable of float tensors ``(B, 3, H, W)`` (or tuples, first item the
            tensor), moved to the model's device.

    Raises:
        NoBatchNormError: if the model has no BatchNorm layer that tracks running stats.
        ValueError: if ``batches`` is empty (the model is then left unchanged).
    """
    layers = [m for _, m in _require_batchnorm(model) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise NoBatchNormError("model has only frozen BatchNorm layers: their statistics cannot be re-estimated")
    device = module_device(model)
    flags = _save_training_flags(model)
    momenta = [bn.momentum for bn in layers]
    started = False
    try:
        model.eval()
        for batch in batches:
            x = _images(batch).to(device)
            if not started:
                for bn in layers:
                    bn.momentum = None
                    bn.reset_running_stats()
                    bn.train()
                started = True
            model(x)
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        _restore_training_flags(flags)
    if not started:
        raise InvalidValueError(
            "batches yielded no images: give at least one batch to re-estimate BatchNorm statistics"
        )
