"""Depth groups: split a model's non-head parameters into ordered groups, stem first.

Three sources of the split, tried in this order:

- ``timm``: the model's own ``group_matcher(coarse=True)`` through
  ``timm.models.group_parameters``; the group holding the classifier is the head.
- ``torchvision:<family>``: a small adapter per torchvision family (resnet, efficientnet,
  mobilenet_v2, mobilenet_v3, convnext, vit).
- ``fallback``: one group per top-level child that owns parameters.

Every rule yields a map *parameter name -> group index* plus the set of head parameters;
``partition`` then walks the module tree to find, for each group, the modules that run it
(in registration order, which is forward order for the supported families) and checks that
the groups are contiguous and cover every non-head parameter exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, cast

import torch
from torch import nn

from autotransfer.backbones.types import DepthGroup, TimmModel
from autotransfer.core.errors import AutotransferError

__all__ = [
    "GroupRule",
    "GroupingError",
    "partition",
    "timm_rule",
    "torchvision_rule",
    "fallback_rule",
    "find_head_name",
    "check_chain",
]


class GroupingError(AutotransferError, ValueError):
    """A grouping rule does not apply to this model (non-contiguous, uncovered parameters...)."""


@dataclass
class GroupRule:
    """The output of a grouping rule.

    Attributes:
        adapter: ``timm``, ``torchvision:resnet``, ..., ``fallback``.
        group_of: parameter name -> group index (``0..G-1``) for every non-head parameter.
        head_params: names of the head's parameters (not in any depth group).
        head_name: module name of the final classifier layer (e.g. ``fc``, ``classifier.3``).
        names: optional group names (``G`` of them); default ``stem`` then module names.
    """

    adapter: str
    group_of: dict[str, int]
    head_params: set[str]
    head_name: str
    names: list[str] | None = None


def find_head_name(model: nn.Module) -> str:
    """Module name of the last ``nn.Linear`` in registration order: the classifier."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise GroupingError(f"no nn.Linear classifier found in {type(model).__name__}")
    return last


def _params_under(model: nn.Module, prefix: str) -> list[str]:
    module = model.get_submodule(prefix) if prefix else model
    return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]


# -- rules ---------------------------------------------------------------------------------


def timm_rule(model: nn.Module) -> GroupRule:
    """Groups from timm's ``group_matcher(coarse=True)``; the classifier's group is the head."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher") or not hasattr(model, "get_classifier"):
        raise GroupingError(f"{type(model).__name__} is not a timm model with a group matcher")
    timm_model = cast(TimmModel, model)
    try:
        matcher = timm_model.group_matcher(coarse=True)
    except NotImplementedError as err:
        raise GroupingError(f"{type(model).__name__} has no group matcher") from err
    grouped = group_parameters(model, matcher)
    classifier = timm_model.get_classifier()
    head_name = next((n for n, m in model.named_modules() if m is classifier), None)
    if head_name is None or not isinstance(classifier, nn.Module):
        raise GroupingError(f"{type(model).__name__} has no classifier module")
    classifier_params = set(_params_under(model, head_name))
    head_params: set[str] = set()
    group_of: dict[str, int] = {}
    index = 0
    for names in grouped.values():
        if classifier_params and classifier_params & set(names):
            head_params.update(names)
            continue
        for name in names:
            group_of[name] = index
        index += 1
    return GroupRule("timm", group_of, head_params, head_name)


def _prefix_rule(
    model: nn.Module, adapter: str, groups: list[list[str]], head: str, names: list[str] | None = None
) -> GroupRule:
    """A rule from lists of name prefixes per group (``conv1``, ``layer1``, ``features.3``...)."""
    group_of: dict[str, int] = {}
    for index, prefixes in enumerate(groups):
        for prefix in prefixes:
            for pname, _ in model.named_parameters():
                if pname == prefix or pname.startswith(prefix + "."):
                    group_of[pname] = index
    head_module = model.get_submodule(head)
    head_name = head if isinstance(head_module, nn.Linear) else f"{head}.{find_head_name(head_module)}"
    return GroupRule(adapter, group_of, set(_params_under(model, head)), head_name, names)


def torchvision_rule(model: nn.Module) -> GroupRule:
    """The adapter for a torchvision family; raises ``GroupingError`` for other families."""
    from torchvision import models as tvm

    if isinstance(model, tvm.ResNet):
        return _prefix_rule(
            model,
            "torchvision:resnet",
            [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
            "fc",
            ["stem", "layer1", "layer2", "layer3", "layer4"],
        )
    family = {
        tvm.EfficientNet: "efficientnet",
        tvm.MobileNetV2: "mobilenet_v2",
        tvm.MobileNetV3: "mobilenet_v3",
    }.get(type(model))
    if family is not None:
        count = len(cast(nn.Sequential, model.features))
        names = ["stem"] + [f"features.{i}" for i in range(1, count)]
        return _prefix_rule(
            model, f"torchvision:{family}", [[f"features.{i}"] for i in range(count)], "classifier", names
        )
    if isinstance(model, tvm.ConvNeXt):
        count = len(model.features)
        groups = [["features.0"], ["features.1"]]
        names = ["stem", "features.1"]
        for i in range(2, count, 2):  # (downsample, stage) pairs
            members = [f"features.{j}" for j in range(i, min(i + 2, count))]
            groups.append(members)
            names.append("+".join(members))
        return _prefix_rule(model, "torchvision:convnext", groups, "classifier", names)
    if isinstance(model, tvm.VisionTransformer):
        layers = len(model.encoder.layers)
        chunks = min(4, layers)
        base, extra = divmod(layers, chunks)  # like numpy.array_split: earlier chunks take the remainder
        bounds = [c * base + min(c, extra) for c in range(chunks + 1)]
        groups = [["conv_proj", "class_token", "encoder.pos_embedding"]]
        names = ["stem"]
        for c in range(chunks):
            lo, hi = bounds[c], bounds[c + 1]
            groups.append([f"encoder.layers.encoder_layer_{i}" for i in range(lo, hi)])
            names.append(f"encoder.layers.{lo}-{hi - 1}" if hi - lo > 1 else f"encoder.layers.{lo}")
        groups[-1].append("encoder.ln")
        names[-1] += "+encoder.ln"
        return _prefix_rule(model, "torchvision:vit", groups, "heads", names)
    raise GroupingError(f"no torchvision adapter for {type(model).__name__}")


def fallback_rule(model: nn.Module, min_groups: int = 4) -> GroupRule:
    """One group per top-level child owning parameters; the child holding the last Linear is
    the head. While there are fewer than ``min_groups`` groups, the largest ``nn.Sequential``
    group is split into its children (e.g. torchvision RegNet's ``trunk_output`` into blocks)."""
    head_name = find_head_name(model)
    head_top = head_name.split(".")[0]
    units = [name for name, _ in model.named_children() if name != head_top and _params_under(model, name)]
    while len(units) < min_groups:
        sizes = [
            (sum(p.numel() for p in model.get_submodule(u).parameters()), i)
            for i, u in enumerate(units)
            if isinstance(model.get_submodule(u), nn.Sequential)
            and sum(1 for _, c in model.get_submodule(u).named_children() if any(True for _ in c.parameters())) > 1
        ]
        if not sizes:
            break
        _, i = max(sizes)
        inner = [
            f"{units[i]}.{n}"
            for n, c in model.get_submodule(units[i]).named_children()
            if any(True for _ in c.parameters())
        ]
        units[i : i + 1] = inner
    group_of: dict[str, int] = {}
    for index, unit in enumerate(units):
        for pname in _params_under(model, unit):
            group_of[pname] = index
    # parameters held directly by the root module join the first group
    for pname, _ in model.named_parameters(recurse=False):
        group_of[pname] = 0
    return GroupRule("fallback", group_of, set(_params_under(model, head_top)), head_name)


# -- partition -----------------------------------------------------------------------------


def partition(model: nn.Module, rule: GroupRule) -> list[DepthGroup]:
    """Turn a rule into ``DepthGroup`` objects; raises ``GroupingError`` when it does not fit.

    Checks: every parameter is in exactly one group or the head; group indices are
    non-decreasing in ``model.named_parameters()`` order and along the module walk (so each
    group is a contiguous slice of the network); no group is empty.
    """
    all_params = [n for n, _ in model.named_parameters()]
    missing = [n for n in all_params if n not in rule.group_of and n not in rule.head_params]
    if missing:
        raise GroupingError(f"{rule.adapter}: parameters in no group: {missing[:5]}")
    both = [n for n in rule.group_of if n in rule.head_params]
    if both:
        raise GroupingError(f"{rule.adapter}: parameters in a group and in the head: {both[:5]}")
    sequence = [rule.group_of[n] for n in all_params if n in rule.group_of]
    if any(b < a for a, b in zip(sequence, sequence[1:])):
        raise GroupingError(f"{rule.adapter}: groups are not contiguous in parameter order")
    count = max(sequence) + 1 if sequence else 0
    if count == 0 or sorted(set(sequence)) != list(range(count)):
        raise GroupingError(f"{rule.adapter}: empty depth group(s)")

    entries: list[tuple[str, int | None | str]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = prefix + name
            pnames = [f"{full}.{n}" for n, _ in child.named_parameters()]
            indices = {rule.group_of[p] for p in pnames if p in rule.group_of}
            in_head = sum(p in rule.head_params for p in pnames)
            if not pnames:
                entries.append((full, None))
            elif in_head == len(pnames):
                entries.append((full, "head"))
            elif len(indices) == 1 and in_head == 0:
                entries.append((full, indices.pop()))
            elif any(True for _ in child.children()):
                walk(child, full + ".")
            else:
                raise GroupingError(f"{rule.adapter}: module {full!r} spans several groups")

    walk(model, "")
    grouped = [g for _, g in entries if isinstance(g, int)]
    if any(b < a for a, b in zip(grouped, grouped[1:])):
        raise GroupingError(f"{rule.adapter}: groups are not contiguous in module order")
    modules: list[list[str]] = [[] for _ in range(count)]
    named: list[list[str]] = [[] for _ in range(count)]
    last_grouped = max((i for i, (_, g) in enumerate(entries) if isinstance(g, int)), default=-1)
    current = 0
    for position, (name, g) in enumerate(entries):
        if isinstance(g, int):
            current = g
            modules[g].append(name)
            named[g].append(name)
        elif g is None and position < last_grouped:
            # parameter-free modules (activations, pooling) run with the group before them
            modules[current].append(name)
        # trailing parameter-free modules and the head belong to forward_head
    names = rule.names or ["stem"] + ["+".join(n) for n in named[1:]]
    if len(names) != count:
        raise GroupingError(f"{rule.adapter}: {len(names)} group names for {count} groups")
    return [
        DepthGroup(
            name=names[i],
            modules=modules[i],
            params=[n for n in all_params if rule.group_of.get(n) == i],
        )
        for i in range(count)
    ]


def check_chain(
    model: nn.Module,
    groups: list[DepthGroup],
    forward_head: Callable[[torch.Tensor], torch.Tensor],
    head_name: str,
    size: int,
) -> bool:
    """True when running the group modules in order, then ``forward_head``, equals ``model(x)``.

    Checked numerically on two random ``size``-px images in eval mode, with the head's
    parameters temporarily randomised (a zero head would make any check pass).
    """
    param = next(model.parameters(), None)
    if param is None or param.device.type == "meta":
        return False
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=gen).to(param)
    head = model.get_submodule(head_name)
    saved = {k: v.detach().clone() for k, v in head.state_dict().items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen).to(p))
            reference = model(x)
            out = x
            for group in groups:
                for name in group.modules:
                    out = model.get_submodule(name)(out)
            chained = forward_head(out)
    except Exception:  # shapes do not line up: not a chain
        return False
    finally:
        head.load_state_dict(saved)
        model.train(was_training)
    if not isinstance(reference, torch.Tensor) or chained.shape != reference.shape:
        return False
    scale = reference.abs().max().clamp_min(1e-6)
    return bool(((chained - reference).abs().max() / scale) < 1e-4)
