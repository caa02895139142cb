"""What ``create_backbone`` returns: the model, its depth groups and its preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

__all__ = ["Preprocessing", "DepthGroup", "Backbone", "TimmModel"]


class TimmModel(Protocol):
    """The methods timm's classification models add to ``nn.Module``: they share no base class
    that declares them, so code that has checked a model is timm's casts it to this."""

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]: ...

    def get_classifier(self) -> nn.Module: ...

    def reset_classifier(self, num_classes: int) -> None: ...

    def forward_head(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Preprocessing:
    """How the source model expects its input: ``(x/255 - mean) / std`` at ``input_size`` px."""

    mean: tuple[float, ...]  # per channel: three for RGB models
    std: tuple[float, ...]
    input_size: int
    interpolation: str = "bicubic"


@dataclass
class DepthGroup:
    """One depth group: module names in forward order, and the parameter names it owns."""

    name: str
    modules: list[str]
    params: list[str]

    @property
    def num_params_names(self) -> int:
        return len(self.params)


@dataclass
class Backbone:
    """A pretrained model with a new zero-initialised head, split into depth groups.

    Attributes:
        spec: the model spec it was created from (``efficientnet_lite0``, ``timm:resnet18``...).
        model: the full model; its classifier has ``num_classes`` outputs, zero-initialised.
        groups: the depth groups, stem first, head excluded, covering every non-head
            parameter exactly once.
        head_name: module name of the classifier (e.g. ``classifier`` or ``fc``).
        source_head: the pretrained classifier, kept aside (``None`` if there was none).
        preprocessing: mean, std, native input size and interpolation.
        adapter: which grouping rule was used: ``timm``, ``torchvision:resnet``, ...,
            or ``fallback``.
        chain: True when running ``groups[i].modules`` in order, then ``forward_head``,
            reproduces ``model(x)``; this is what frozen-prefix caching relies on.
        forward_head: maps the last group's output ``(B, C, H, W)`` to logits ``(B, K)``.
        reference_profile: path to the shipped same-domain divergence reference, if any.
    """

    spec: str
    model: nn.Module
    groups: list[DepthGroup]
    head_name: str
    source_head: nn.Module | None
    preprocessing: Preprocessing
    adapter: str
    chain: bool
    forward_head: Callable[[torch.Tensor], torch.Tensor]
    reference_profile: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        """``G``: the number of depth groups."""
        return len(self.groups)
