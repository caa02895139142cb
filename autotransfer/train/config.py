"""``TrainConfig``: every setting of one fine-tuning trial, as plain JSON-serialisable values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from autotransfer.core.errors import UserError
from autotransfer.core.knobs import OPTIMIZER, TRIAL_KNOBS, check_device, check_number

__all__ = ["TrainConfig", "resolve_device", "module_device", "default_amp"]


def default_amp(device: torch.device) -> bool:
    """bf16 autocast by default: on CUDA devices with native bf16 only (Ampere and newer; older
    GPUs emulate it slowly), never on the CPU."""
    return device.type == "cuda" and native_bf16()


def native_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively. ``torch.cuda.is_bf16_supported()``
    counts emulation as support by default on recent torch (``including_emulation=True``), so
    ask without it; torch releases without that argument only report native support."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3: no such argument, and no emulation counted
        return bool(torch.cuda.is_bf16_supported())


@dataclass
class TrainConfig:
    """One trial's protocol and run settings (``asdict`` gives plain JSON values).

    Attributes:
        lr: base learning rate of the backbone's last trainable group (ELR = lr / (1 - momentum)).
        momentum: SGD momentum (nesterov off); for AdamW it is beta1.
        head_lr_mult: the new head's lr is ``lr * head_lr_mult``.
        freeze: ``f`` in [0, G]: groups 0..f-1 get no gradient and run in eval mode.
        reinit: ``r`` in [0, G - f]: the last r depth groups are re-initialised.
        layer_decay: layer-wise lr decay (1 = none); group ``g`` gets ``lr * decay**(G-1-g)``.
        weight_decay: L2 / decoupled weight decay.
        bn_mode: ``adapt`` (trainable groups' BN in train mode) or ``frozen`` (eval mode).
        l2sp: L2-SP strength alpha (0 = off): ``alpha/2 * ||w - w0||^2`` on the pretrained,
            trainable, non-re-initialised backbone weights (Li et al. 2018).
        schedule: ``one-stage``, ``lp-ft`` or ``gradual``: when groups f..G-r-1 start to train
            (``core.protocol.SCHEDULES``; docs/design.md, "Schedules").
        stage_frac: ``lp-ft``: the fraction of ``steps`` that trains only the head and the
            re-initialised groups; ``gradual``: the fraction by which the last group is unfrozen.
        optimizer: ``sgd`` or ``adamw``.
        batch_size: images per optimizer step.
        micro_batch: images per forward/backward pass (``None`` = ``batch_size``); gradients
            are accumulated over ``ceil(batch_size / micro_batch)`` passes, so the protocol is the
            same (up to float rounding; BatchNorm in train mode sees the micro-batches).
        resolution: input size in pixels (the data side must produce this size).
        steps: the budget, in optimizer steps.
        eval_every: validate every this many steps (and always at the end).
        warmup_frac: fraction of ``steps`` spent in a linear lr warmup before the cosine decay.
        views: ``V``, the size of the augmentation bank for cached frozen prefixes.
        augment: random-resized-crop + flip (False: the plain resized image).
        seed: seeds re-initialisation, batch sampling, augmentation and the view bank.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` (``core.knobs.check_device``).
        channels_last: memory format; ``None`` = auto (on; faster on CPU and GPU here).
        amp: mixed precision; ``None`` = auto (bf16 autocast on CUDA only).
        cache_prefix: cache the frozen prefix's outputs when ``freeze > 0``.
    """

    lr: float = 0.01
    momentum: float = 0.9
    head_lr_mult: float = 10.0
    freeze: int = 0
    reinit: int = 0
    layer_decay: float = 1.0
    weight_decay: float = 0.0
    bn_mode: str = "adapt"
    l2sp: float = 0.0
    schedule: str = "one-stage"
    stage_frac: float = 0.3
    optimizer: str = "sgd"
    batch_size: int = 32
    micro_batch: int | None = None
    resolution: int = 64
    steps: int = 100
    eval_every: int = 50
    warmup_frac: float = 0.0
    views: int = 8
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    channels_last: bool | None = None
    amp: bool | None = None
    cache_prefix: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, num_groups: int | None = None) -> "TrainConfig":
        """Check every value; with ``num_groups`` (G) also check ``freeze`` and ``reinit``.

        Raises:
            UserError: naming the first bad value.
        """
        for knob in TRIAL_KNOBS:  # the protocol's values: checked as core.knobs declares them
            knob.check(getattr(self, knob.name))
        OPTIMIZER.check(self.optimizer)
        check_device(self.device)
        check_number("warmup_frac", self.warmup_frac, 0.0, 1.0, high_open=True)
        for name in ("batch_size", "resolution", "steps", "eval_every", "views"):
            _int_at_least(name, getattr(self, name), 1)
        if self.micro_batch is not None:
            _int_at_least("micro_batch", self.micro_batch, 1)
        _int_at_least("seed", self.seed, 0)
        for name in ("augment", "cache_prefix"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"TrainConfig.{name} must be true or false, but got {getattr(self, name)!r}")
        for name in ("channels_last", "amp"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise UserError(f"TrainConfig.{name} must be true, false or null (auto), but got {value!r}")
        if num_groups is not None:
            if self.freeze > num_groups:
                raise UserError(
                    f"TrainConfig.freeze must be in [0, {num_groups}] (the model has {num_groups} "
                    f"depth groups), but got {self.freeze!r}"
                )
            if self.reinit > num_groups - self.freeze:
                raise UserError(
                    f"TrainConfig.reinit must be in [0, G - freeze] = [0, {num_groups - self.freeze}], "
                    f"but got {self.reinit!r}"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``dataclasses.asdict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The inverse of ``to_dict``; unknown keys are a ``UserError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown TrainConfig field(s) {unknown!r}; known fields are {sorted(known)!r}")
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with ``changes`` applied."""
        return replace(self, **changes)

    @property
    def elr(self) -> float:
        """Effective learning rate ``lr / (1 - momentum)`` (Li et al., ICLR 2020)."""
        return self.lr / (1.0 - self.momentum)


def resolve_device(device: str | torch.device, *, what: str = "device") -> torch.device:
    """The one device resolver: ``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` or
    ``cuda:N`` (or a ``torch.device`` of those) as given. A device outside ``core.knobs.check_device``'s
    forms (the rule ``TrainConfig`` checks too), or CUDA without a GPU, is a one-line ``UserError``
    (``what`` names the setting in it)."""
    if isinstance(device, torch.device):
        device = str(device)
    if check_device(device, what) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was requested but no CUDA GPU is available; use --device cpu")
    return resolved


def module_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` lives: the device of its first parameter, else of its first buffer, else the CPU."""
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"TrainConfig.{name} must be an integer >= {low}, but got {value!r}")
