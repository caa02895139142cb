"""Surgery on depth groups: freeze the first f, set BN modes, re-initialise the last r, optimizer param groups."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from autotransfer.backbones.types import Backbone
from autotransfer.core.errors import InvalidValueError
from autotransfer.core.knobs import BN_MODES, KNOBS

__all__ = ["freeze", "train_mode", "reinit", "param_groups", "snapshot", "head_params", "BN_MODES"]

_NO_DECAY_NAMES = ("cls_token", "class_token", "pos_embed", "pos_embedding", "dist_token", "reg_token")


def _check_depth(backbone: Backbone, value: int, what: str) -> None:
    count = backbone.num_groups
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= count:
        raise InvalidValueError(f"{what} must be an integer in [0, {count}] for {backbone.spec!r}, but got {value!r}")


def head_params(backbone: Backbone) -> list[str]:
    """Names of the parameters outside every depth group (the head), in model order."""
    grouped = {n for g in backbone.groups for n in g.params}
    return [n for n, _ in backbone.model.named_parameters() if n not in grouped]


def _group_modules(backbone: Backbone, index: int) -> list[nn.Module]:
    model = backbone.model
    return [model.get_submodule(name) for name in backbone.groups[index].modules]


def freeze(backbone: Backbone, f: int) -> None:
    """Groups ``0..f-1`` get ``requires_grad=False``; groups ``f..G-1`` and the head get True."""
    _check_depth(backbone, f, "freeze depth f")
    params = dict(backbone.model.named_parameters())
    for i, group in enumerate(backbone.groups):
        for name in group.params:
            params[name].requires_grad_(i >= f)
    for name in head_params(backbone):
        params[name].requires_grad_(True)


def train_mode(backbone: Backbone, f: int, bn_mode: str = "adapt", r: int = 0) -> None:
    """``model.train()``, then the frozen groups ``0..f-1`` back to eval mode (frozen BN
    statistics, no dropout or drop-path, so their outputs are a fixed function of the input);
    with ``bn_mode="frozen"`` every BatchNorm in the trainable, pretrained groups and the head
    runs in eval mode too (affine parameters still train). The last ``r`` groups, re-initialised,
    keep BatchNorm in train mode either way: they have no source statistics to keep, and running
    them on their reset statistics (mean 0, variance 1) left those protocols at chance level
    (measured, issue 14: elpv at N = 200)."""
    _check_depth(backbone, f, "freeze depth f")
    KNOBS["bn_mode"].check(bn_mode)
    model = backbone.model
    model.train()
    for i in range(f):
        for module in _group_modules(backbone, i):
            module.eval()
    if bn_mode == "frozen":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        for i in range(backbone.num_groups - r, backbone.num_groups) if r else ():
            for module in _group_modules(backbone, i):
                for bn in module.modules():
                    if isinstance(bn, _BatchNorm):
                        bn.train()


def reinit(backbone: Backbone, r: int, *, seed: int = 0) -> None:
    """Give the last ``r`` depth groups fresh weights and reset their BN running statistics.

    Fresh weights come from the architecture's own initialisation: a new randomly
    initialised model built by the backbone's factory with the CPU generator seeded by ``seed``,
    whose tensors for those groups (parameters and buffers) are copied in. Backbones
    without a factory fall back to each module's ``reset_parameters()`` (and
    ``reset_running_stats()`` for BN), seeded the same way. The global RNG is left as it was.
    """
    _check_depth(backbone, r, "reinit depth r")
    if r == 0:
        return
    count = backbone.num_groups
    indices = list(range(count - r, count))
    factory = backbone.extra.get("factory")
    # seed only the CPU generator, which module initialisation uses: ``torch.manual_seed`` would
    # also reseed every CUDA generator, which ``fork_rng(devices=[])`` does not restore
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if factory is not None and _reinit_from_factory(backbone, indices, factory):
            return
        torch.default_generator.manual_seed(seed)
        _reinit_by_reset(backbone, indices)


def _group_state_names(backbone: Backbone, index: int) -> list[str]:
    """Parameter and buffer names of group ``index`` (state-dict names)."""
    group = backbone.groups[index]
    names = list(group.params)
    for module_name in group.modules:
        module = backbone.model.get_submodule(module_name)
        names += [f"{module_name}.{b}" for b, _ in module.named_buffers()]
    return list(dict.fromkeys(names))


def _reinit_from_factory(backbone: Backbone, indices: list[int], factory) -> bool:
    fresh = factory().state_dict()
    own = backbone.model.state_dict(keep_vars=True)
    names = [n for i in indices for n in _group_state_names(backbone, i)]
    if any(n not in fresh or n not in own or fresh[n].shape != own[n].shape for n in names):
        return False
    with torch.no_grad():
        for name in names:
            own[name].copy_(fresh[name])
    return True


def _reinit_by_reset(backbone: Backbone, indices: list[int]) -> None:
    model = backbone.model
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i in indices:
            covered: set[int] = set()
            for module_name in backbone.groups[i].modules:
                for sub in model.get_submodule(module_name).modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if reset is not None:
                        reset()
                        covered.update(id(p) for p in sub.parameters(recurse=False))
                    if isinstance(sub, _BatchNorm):
                        sub.reset_running_stats()
            for name in backbone.groups[i].params:  # parameters owned by modules without a reset
                param = params[name]
                if id(param) not in covered:
                    nn.init.trunc_normal_(param, std=0.02) if param.ndim > 1 else param.fill_(
                        1.0 if name.endswith(("weight", "gamma", "scale")) else 0.0
                    )


def _no_decay(name: str, param: torch.Tensor, extra: set[str]) -> bool:
    return param.ndim <= 1 or name in extra or name.split(".")[-1] in _NO_DECAY_NAMES


def param_groups(
    backbone: Backbone,
    f: int,
    *,
    lr: float,
    head_lr_mult: float = 1.0,
    layer_decay: float = 1.0,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer param groups for training with freeze depth ``f``.

    Depth group ``i`` (``f <= i < G``) gets ``lr * layer_decay ** (G - 1 - i)``; the head gets
    ``lr * head_lr_mult``. Biases, norm parameters (any 1-d tensor) and token/position
    embeddings get no weight decay; the rest gets ``weight_decay``. Each dict carries
    ``params``, ``lr``, ``weight_decay``, ``name`` (``"<i>:<group>"`` or ``"head"``, with a
    ``/no_decay`` suffix for the undecayed half) and ``depth`` (``i``, ``G`` for the head).
    Empty halves are left out.
    """
    _check_depth(backbone, f, "freeze depth f")
    for label, value in (("lr", lr), ("head_lr_mult", head_lr_mult), ("layer_decay", layer_decay)):
        KNOBS[label].check(value)
    KNOBS["weight_decay"].check(weight_decay)
    model = backbone.model
    params = dict(model.named_parameters())
    no_wd = getattr(model, "no_weight_decay", None)
    extra = set(no_wd()) if callable(no_wd) else set()
    count = backbone.num_groups
    units = [
        (f"{i}:{backbone.groups[i].name}", i, backbone.groups[i].params, lr * layer_decay ** (count - 1 - i))
        for i in range(f, count)
    ]
    units.append(("head", count, head_params(backbone), lr * head_lr_mult))
    result = []
    for name, depth, names, group_lr in units:
        decay = [params[n] for n in names if not _no_decay(n, params[n], extra)]
        plain = [params[n] for n in names if _no_decay(n, params[n], extra)]
        for suffix, members, wd in (("", decay, weight_decay), ("/no_decay", plain, 0.0)):
            if members:
                result.append(
                    {"params": members, "lr": group_lr, "weight_decay": wd, "name": name + suffix, "depth": depth}
                )
    return result


def snapshot(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Detached copies of every depth-group parameter (head excluded): the L2-SP anchor."""
    params = dict(backbone.model.named_parameters())
    return {n: params[n].detach().clone() for g in backbone.groups for n in g.params}
