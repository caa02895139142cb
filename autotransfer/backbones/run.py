"""Run a backbone group by group: a slice of a chaining model, or every group's output via hooks."""

from __future__ import annotations

import torch

from autotransfer.backbones.types import Backbone
from autotransfer.core.errors import AutotransferRuntimeError, InvalidValueError

__all__ = ["run_groups", "group_outputs"]


def run_groups(backbone: Backbone, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Run depth groups ``start..stop-1`` of a chaining backbone on ``x``.

    ``x`` is the input of group ``start``: images ``(B, 3, H, W)`` when ``start == 0``, else the
    output of group ``start-1``. Returns the output of group ``stop-1`` (``(B, C, H', W')``), or
    ``x`` itself when ``start == stop``. Runs in whatever train/eval mode the modules are in.
    """
    if not backbone.chain:
        raise InvalidValueError(f"backbone {backbone.spec!r} does not chain its groups; use group_outputs")
    count = backbone.num_groups
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= count):
        raise InvalidValueError(f"need 0 <= start <= stop <= {count}, but got start={start!r}, stop={stop!r}")
    model = backbone.model
    for group in backbone.groups[start:stop]:
        for name in group.modules:
            x = model.get_submodule(name)(x)
    return x


def group_outputs(backbone: Backbone, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
    """The output of each depth group for images ``x (B, 3, H, W)``.

    Returns ``stop`` tensors (default all ``G``): ``(B, C, H', W')`` for convolutional groups,
    ``(B, T, D)`` for transformer groups. Chaining backbones run only the groups needed;
    others run the whole model with forward hooks on each group's last module. Runs in the
    current train/eval mode and with the current grad mode (wrap in ``torch.no_grad()`` for
    features).
    """
    count = backbone.num_groups if stop is None else stop
    if not 0 <= count <= backbone.num_groups:
        raise InvalidValueError(f"stop must be in [0, {backbone.num_groups}], but got {stop!r}")
    if backbone.chain:
        outputs = []
        for i in range(count):
            x = run_groups(backbone, x, i, i + 1)
            outputs.append(x)
        return outputs
    model = backbone.model
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def hook(index: int):
        def save(module, inputs, output):
            captured[index] = output[0] if isinstance(output, (tuple, list)) else output

        return save

    try:
        for i, group in enumerate(backbone.groups[:count]):
            if not group.modules:
                raise InvalidValueError(f"group {group.name!r} of {backbone.spec!r} has no module to hook")
            handles.append(model.get_submodule(group.modules[-1]).register_forward_hook(hook(i)))
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [backbone.groups[i].name for i in range(count) if i not in captured]
    if missing:
        raise AutotransferRuntimeError(f"groups {missing} of {backbone.spec!r} produced no output in forward")
    return [captured[i] for i in range(count)]
