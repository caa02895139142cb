"""Local weight files: read a state dict, load it into a model, and save a backbone with its sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotransfer.core.errors import InvalidValueError, UserError

__all__ = ["WEIGHT_SUFFIXES", "read_state_dict", "load_into", "sidecar_path", "read_sidecar", "save_backbone"]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` (``safetensors.torch.load_file``) or ``.pt/.pth/.bin``
    (``torch.load(weights_only=True)``) file, on the CPU. Unwraps ``{"state_dict": ...}``-style
    training checkpoints and strips a ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {str(path)!r}; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickled objects weights_only refuses, ...
        raise UserError(
            f"cannot read weights from {str(path)!r} ({type(err).__name__}: {err}); "
            "save a plain state dict (torch.save(model.state_dict(), path) or safetensors)"
        ) from err
    for _ in range(2):
        if isinstance(raw, dict) and not all(isinstance(v, torch.Tensor) for v in raw.values()):
            inner = next((raw[k] for k in _WRAPPER_KEYS if isinstance(raw.get(k), dict)), None)
            if inner is None:
                break
            raw = inner
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(
            f"{str(path)!r} does not hold a state dict of tensors; save one with torch.save(model.state_dict(), path)"
        )
    if all(k.startswith("module.") for k in raw):
        raw = {k[len("module.") :]: v for k, v in raw.items()}
    return dict(raw)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` strictly (names and shapes), ignoring only
    ``num_batches_tracked`` buffers; dtypes are converted (float16 files load into float32)."""
    own = model.state_dict()
    skip = "num_batches_tracked"
    missing = [k for k in own if k not in state and not k.endswith(skip)]
    unexpected = [k for k in state if k not in own and not k.endswith(skip)]
    if missing or unexpected:
        raise UserError(
            f"weights in {source!r} do not fit the architecture: missing {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'...' if len(unexpected) > 4 else ''}; check the arch in its sidecar JSON or the timm:NAME@ prefix"
        )
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if wrong:
        raise UserError(
            f"weights in {source!r} have other shapes than the architecture: "
            f"{wrong[:3]} (name, file, model); check the arch and its kwargs"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def sidecar_path(weights: str | Path) -> Path | None:
    """The sidecar JSON of a weights file: ``<file>.json`` or ``<stem>.json``, if present."""
    weights = Path(weights)
    for candidate in (weights.with_name(weights.name + ".json"), weights.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(weights: str | Path) -> dict[str, Any]:
    """The parsed sidecar of ``weights``; raises ``UserError`` when absent or without ``arch``."""
    path = sidecar_path(weights)
    if path is None:
        raise UserError(
            f"{str(weights)!r} needs an architecture: write a sidecar {str(weights) + '.json'!r} such as "
            '{"arch": "timm:resnet18"}, or use the spec timm:NAME@' + str(weights)
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the sidecar {str(path)!r}: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str):
        raise UserError(f'the sidecar {str(path)!r} has no "arch" string (e.g. "timm:resnet18")')
    return meta


def save_backbone(
    backbone,
    path: str | Path,
    *,
    classes: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    extra: dict | None = None,
) -> Path:
    """Write ``backbone.model`` (its current head included) to ``path`` (``.safetensors``, or
    ``.pt``/``.pth``) and a sidecar ``<path>.json`` so that ``create_backbone(str(path), k)``
    reloads it: arch, kwargs, num_classes, preprocessing, classes and ``extra``. Returns the path."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"checkpoint path must end in one of {WEIGHT_SUFFIXES}, but got {str(path)!r}")
    arch = backbone.extra.get("arch")
    if not arch:
        raise InvalidValueError(f"backbone {backbone.spec!r} records no architecture; it cannot be saved")
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in backbone.model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    head = backbone.model.get_submodule(backbone.head_name)
    pre = backbone.preprocessing
    meta = {
        "arch": arch,
        "kwargs": backbone.extra.get("kwargs", {}),
        "num_classes": int(getattr(head, "out_features", 0)),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "input_size": pre.input_size,
        "interpolation": pre.interpolation,
        "source_spec": backbone.spec,
    }
    if classes is not None:
        meta["classes"] = list(classes)
    meta.update(extra or {})
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path
