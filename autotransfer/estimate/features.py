"""Pooled backbone features at every depth group, and source-head probabilities for LEEP."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterable, Iterator, cast

import numpy as np
import torch
from torch import nn

from autotransfer.backbones.types import Backbone
from autotransfer.core.errors import AutotransferRuntimeError, InvalidValueError
from autotransfer.data.types import ImageDataset
from autotransfer.train.config import module_device

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from autotransfer.data.device import DeviceBatches

__all__ = [
    "GroupFeatureCollector",
    "extract_group_features",
    "image_batches",
    "native_array",
    "pool",
    "progress_bar",
    "source_probabilities",
]


def pool(output: torch.Tensor) -> torch.Tensor:
    """Global average pool of one group output: ``(B, C, H, W)`` -> ``(B, C)`` (mean over H, W),
    ``(B, T, D)`` tokens -> ``(B, D)`` (mean over tokens), ``(B, D)`` unchanged."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output.mean(dim=1)
    if output.dim() == 2:
        return output
    raise InvalidValueError(f"cannot pool a group output of shape {tuple(output.shape)}; expected 2, 3 or 4 dims")


class GroupFeatureCollector:
    """Forward hooks that keep the pooled output of every depth group of ``backbone``.

    Any forward pass of ``backbone.model`` inside ``with collector:`` adds one ``(B, C_g)``
    float32 block per group (the output of the group's last module, as in
    ``autotransfer.backbones.group_outputs``); ``features()`` concatenates them. This lets one
    pass serve several consumers (e.g. ``bn_divergence`` runs the model, the collector keeps
    the features).
    """

    def __init__(self, backbone: Backbone) -> None:
        for group in backbone.groups:
            if not group.modules:
                raise InvalidValueError(f"group {group.name!r} of {backbone.spec!r} has no module to hook")
        self.backbone = backbone
        self._blocks: list[list[torch.Tensor]] = [[] for _ in backbone.groups]
        self._handles: list = []

    def _hook(self, index: int):
        def save(module: nn.Module, inputs, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._blocks[index].append(pool(out.detach()).float().cpu())

        return save

    def __enter__(self) -> "GroupFeatureCollector":
        model = self.backbone.model
        for i, group in enumerate(self.backbone.groups):
            module = model.get_submodule(group.modules[-1])
            self._handles.append(module.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def features(self) -> list[np.ndarray]:
        """``G`` arrays ``(n, C_g)`` float32, stem first; ``n`` = images seen so far."""
        counts = {sum(b.shape[0] for b in blocks) for blocks in self._blocks}
        if len(counts) != 1:
            missing = [g.name for g, blocks in zip(self.backbone.groups, self._blocks) if not blocks]
            raise AutotransferRuntimeError(
                f"groups of {self.backbone.spec!r} saw different numbers of images "
                f"({sorted(counts)}); groups without output: {missing}"
            )
        return [
            torch.cat(blocks).numpy().astype(np.float32, copy=False) if blocks else np.zeros((0, 0), np.float32)
            for blocks in self._blocks
        ]


def native_array(backbone: Backbone, dataset: ImageDataset) -> np.ndarray:
    """``dataset`` as ``(N, S, S, 3)`` uint8 at the model's native input size ``S``
    (``preprocessing.input_size``; ``autotransfer.data.to_array``, bicubic, centre crop)."""
    from autotransfer.data.cache import to_array

    # not cached on disk: native sizes (224-260 px) are large and rarely reused by trials
    return to_array(dataset, backbone.preprocessing.input_size, cache=False)


def image_batches(
    backbone: Backbone,
    images: np.ndarray,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    progress: tuple[Progress, TaskID] | None = None,
) -> Iterator[torch.Tensor]:
    """Normalised float32 batches ``(B, 3, S, S)`` of ``images`` ``(N, S, S, 3)`` uint8:
    ``(x / 255 - mean) / std`` with the backbone's preprocessing, in order.

    ``progress`` is an optional ``(rich.progress.Progress, task_id)`` pair advanced per batch.
    """
    pre = backbone.preprocessing
    device = torch.device(device)
    scale = torch.tensor([1.0 / (255.0 * s) for s in pre.std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(pre.mean, pre.std)], device=device).view(1, 3, 1, 1)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        x = chunk.permute(0, 3, 1, 2).float().mul_(scale).add_(shift)
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        yield x
        if progress is not None:
            bar, task = progress
            bar.advance(task, x.shape[0])


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool):
    """A rich progress bar (``(progress, task_id)``) over ``total`` images on stderr, or ``None``."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # on stderr: stdout carries the tables (and JSON), which stay clean when piped
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        yield bar, bar.add_task(description, total=total)


def _as_images(backbone: Backbone, data) -> np.ndarray | DeviceBatches:
    if isinstance(data, ImageDataset):
        return native_array(backbone, data)
    if isinstance(data, np.ndarray):
        if data.ndim != 4 or data.shape[3] != 3 or data.dtype != np.uint8:
            raise InvalidValueError(
                f"images must be an (N, S, S, 3) uint8 array, but got shape {data.shape} dtype {data.dtype}"
            )
        return data
    if hasattr(data, "eval_batches"):  # DeviceBatches: its plain (evaluation) view
        return cast("DeviceBatches", data)
    raise InvalidValueError(
        f"expected an ImageDataset, an (N, S, S, 3) uint8 array or DeviceBatches, but got {type(data).__name__}"
    )


@torch.no_grad()
def extract_group_features(
    backbone: Backbone,
    batches_or_array,
    *,
    batch_size: int = 32,
    progress: bool = False,
    channels_last: bool = True,
    description: str = "features",
) -> list[np.ndarray]:
    """Pooled features at every depth-group output, in eval mode, without gradients.

    Args:
        backbone: the model (left on its device; its train/eval flags are restored).
        batches_or_array: an ``ImageDataset`` (resized to the native ``input_size`` with
            ``to_array``), an ``(N, S, S, 3)`` uint8 array (used at its own size ``S``: give
            it at the native size), or ``DeviceBatches`` (their plain evaluation view).
        batch_size: images per forward pass.
        progress: draw a rich progress bar (per image) while extracting.
        channels_last: feed the input in ``torch.channels_last`` memory format (about 2x faster
            on CPU here; the model's own weights are left as they are).
        description: the progress bar's label.

    Returns:
        ``G`` float32 arrays ``(N, C_g)``, stem first: the global average over H, W of each
        group's output (tokens: the mean over tokens). The last one holds the final features
        (the input of the classifier for pooled CNN heads).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidValueError(f"batch_size must be a positive integer, but got {batch_size!r}")
    data = _as_images(backbone, batches_or_array)
    model = backbone.model
    device = module_device(model)
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        total = len(data)
        with progress_bar(description, total, progress) as bar, GroupFeatureCollector(backbone) as collector:
            if isinstance(data, np.ndarray):
                batches: Iterable = image_batches(
                    backbone,
                    data,
                    batch_size=batch_size,
                    device=device,
                    channels_last=channels_last,
                    progress=bar,
                )
                for x in batches:
                    model(x)
            else:
                for x, _ in data.eval_batches(batch_size):
                    x = x.to(device)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    model(x)
                    if bar is not None:
                        bar[0].advance(bar[1], x.shape[0])
        return collector.features()
    finally:
        for module, training in flags.items():
            module.training = training


@torch.no_grad()
def source_probabilities(backbone: Backbone, final_features: np.ndarray) -> np.ndarray | None:
    """Softmax of the pretrained ``source_head`` on the final pooled features, for LEEP.

    Exact for global-average-pooled CNN heads (timm EfficientNet / ResNet, the laboratory);
    for token models whose head reads the class token, the mean over tokens stands in for it.

    Args:
        backbone: a backbone whose ``source_head`` is the pretrained classifier (or ``None``).
        final_features: ``(N, D)`` pooled output of the last depth group.

    Returns:
        ``(N, Z)`` float64 source-class probabilities, or ``None`` when the model has no source
        head or the head does not take ``D`` features (e.g. a head with layers after pooling).
    """
    head = backbone.source_head
    if head is None:
        return None
    in_features = getattr(head, "in_features", None)
    if in_features is not None and in_features != final_features.shape[1]:
        return None
    param = next(head.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(final_features)).to(device=device, dtype=dtype)
    logits = head(x).double()
    return torch.softmax(logits, dim=1).cpu().numpy()
