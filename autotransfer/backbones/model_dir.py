"""A fine-tuned model as a folder in timm's own pretrained format: ``config.json`` + ``model.safetensors``.

The folder is what ``timm.create_model("local-dir:DIR", pretrained=True)`` and the Hugging Face hub
read (``timm.models.save_for_hf`` writes the same layout):

- ``config.json``: ``architecture`` (the real timm name, e.g. ``tf_efficientnet_lite0`` for the
  built-in Lite weights: timm's ``efficientnet_lite0`` is another network), ``num_classes``,
  ``label_names`` (index ``i`` names output ``i``), ``model_args`` (constructor arguments, when any)
  and ``pretrained_cfg`` (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``,
  ``crop_mode``): the preprocessing the model was trained and scored with. autotransfer's own keys
  (where the weights came from, the protocol, the scores) sit under ``"autotransfer"``; timm
  ignores them.
- ``model.safetensors``: the state dict in timm's key names (for torchvision backbones, in
  torchvision's; timm cannot build those, ``autotransfer.load_model`` can).

``crop_pct`` is 1.0 and ``crop_mode`` ``center``: autotransfer scores a model on the image resized
(bicubic) so its shorter side is the input size, then centre-cropped, which is timm's evaluation
transform with ``crop_pct = 1``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Iterator

from torch import nn

from autotransfer.backbones.checkpoint import load_into, read_state_dict
from autotransfer.backbones.types import Preprocessing
from autotransfer.core.errors import InvalidValueError, UserError

__all__ = [
    "MODEL_DIR_FORMAT",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "is_model_dir",
    "write_model_dir",
    "write_model_files",
    "staged_model_dir",
    "weights_bytes",
    "read_model_config",
    "model_dir_preprocessing",
    "build_model",
    "model_library",
    "model_args",
    "ENSEMBLE_DIR",
    "ensemble_member_dirs",
    "portable_model_spec",
    "file_name",
]

MODEL_DIR_FORMAT = "autotransfer/model-dir/v1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: Where an ensemble's other members live inside its folder (``members/2``, ``members/3``...).
ENSEMBLE_DIR = "members"
#: What a model folder holds (``train --config`` adds its metrics.json); ``staged_model_dir``
#: replaces only folders that hold nothing else.
_MODEL_ENTRIES = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, ENSEMBLE_DIR, "metrics.json"}


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a ``config.json``."""
    path = Path(path).expanduser()
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def file_name(path: str) -> str:
    """The last component of ``path`` (``/a/b/data/`` -> ``data``; ``""`` and ``"."`` stay as given)."""
    return PurePath(path.rstrip("/\\")).name or path


def portable_model_spec(spec: Any) -> Any:
    """A backbone spec with a local weights file cut to its name, as a model folder records it (no
    path of the training machine): ``timm:NAME@/a/w.safetensors`` -> ``timm:NAME@w.safetensors``."""
    if not isinstance(spec, str) or "@" not in spec:
        return spec
    name, _, weights = spec.partition("@")
    return f"{name}@{file_name(weights)}"


def _architecture(backbone) -> tuple[str, str]:
    """``(family, name)``: ``("timm", timm model name)`` or ``("torchvision", torchvision name)``."""
    arch = str(backbone.extra.get("arch") or "")
    if arch.startswith("timm:"):
        cfg = getattr(backbone.model, "pretrained_cfg", None) or {}
        # the real architecture (``tf_efficientnet_lite0``, not a hub id or an alias)
        return "timm", str(cfg.get("architecture") or arch[len("timm:") :])
    if arch.startswith(("tv:", "torchvision:")):
        return "torchvision", arch.split(":", 1)[1]
    raise UserError(
        f"backbone {backbone.spec!r} records no timm or torchvision architecture (arch {arch!r}):"
        " it cannot be written as a model folder; create it from a timm:NAME or tv:NAME spec"
    )


def weights_bytes(*backbones) -> int:
    """Bytes the ``model.safetensors`` of ``backbones`` take (their state dicts' tensors), for a
    disk-full message that says how much room a model folder needs."""
    return sum(t.numel() * t.element_size() for backbone in backbones for t in backbone.model.state_dict().values())


def _replaceable(directory: Path) -> None:
    """Refuse to replace ``directory`` unless it is a model folder (or empty, or a half-written one):
    replacing moves the whole folder aside, so a folder holding anything else must not be given."""
    if not directory.is_dir():
        raise UserError(f"{str(directory)!r} exists and is not a folder; give a new folder for the model")
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in _MODEL_ENTRIES and not p.name.startswith("."))
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"{str(directory)!r} holds files that are not part of a model folder ({shown}); writing the model"
            " there replaces the whole folder: give a new folder, or one that only holds a model"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _remove_stale(directory: Path) -> None:
    """Temporary siblings of ``directory`` left by a writer that died (its pid is gone)."""
    for path in directory.parent.glob(f".{glob.escape(directory.name)}.*-*"):
        kind, _, pid = path.name[len(directory.name) + 2 :].rpartition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_model_dir(directory: str | Path, *, needed: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``directory`` (``.NAME.tmp-PID``) to write a model folder
    into; when the block ends without an error, it is renamed to ``directory``. An earlier model
    folder there is moved aside first and removed after, so ``directory`` is always the old folder,
    the complete new one, or (for the instant between two renames) absent: never half a folder.

    On any error the temporary folder is removed and ``directory`` is left as it was; a full disk
    is a one-line ``UserError`` naming ``directory`` and the ``needed`` bytes. A ``directory`` that
    holds anything but a model folder's files is refused (it would be replaced whole).
    """
    from autotransfer.core.diskspace import disk_full_cause, disk_full_error

    directory = Path(directory).expanduser()
    if directory.exists():
        _replaceable(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(directory)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()  # os.mkdir's mode (0777 less the umask), not tempfile's 0700
        yield tmp
        if directory.exists():
            os.replace(directory, old)
            try:
                os.replace(tmp, directory)
            except BaseException:
                os.replace(old, directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and not isinstance(err, UserError) and disk_full_cause(err) is not None:
            raise disk_full_error(err, directory, needed) from None
        raise


def write_model_dir(
    backbone,
    directory: str | Path,
    *,
    label_names: list[str],
    input_size: int,
    interpolation: str = "bicubic",
    crop_pct: float = 1.0,
    extra: dict[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Write ``backbone.model`` (its trained head included) as a model folder; returns the folder.

    ``label_names`` name the outputs in order; ``input_size`` (px, square) and ``interpolation``
    are the preprocessing the model was trained and scored with (mean and std come from
    ``backbone.preprocessing``). ``extra`` goes under ``config["autotransfer"]`` beside the
    source of the weights; ``card`` becomes the folder's ``README.md``. The folder is written to a
    temporary sibling and renamed into place (``staged_model_dir``), so a reader never sees half a
    folder and a full disk leaves the old folder (or none) and one line.
    """
    directory = Path(directory)
    with staged_model_dir(directory, needed=weights_bytes(backbone)) as staging:
        write_model_files(
            backbone,
            staging,
            label_names=label_names,
            input_size=input_size,
            interpolation=interpolation,
            crop_pct=crop_pct,
            extra=extra,
        )
        if card is not None:
            (staging / CARD_NAME).write_text(card)
    return directory


def write_model_files(
    backbone,
    directory: Path,
    *,
    label_names: list[str],
    input_size: int,
    interpolation: str = "bicubic",
    crop_pct: float = 1.0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``config.json`` and ``model.safetensors`` written into the existing folder ``directory`` (in
    place: ``write_model_dir`` and the model card stage the folder around it); returns the config.

    ``model.safetensors`` gets the mode ``config.json`` was created with (safetensors creates its
    files 0600), so the whole folder is as readable as the umask lets ordinary files be.
    """
    from safetensors.torch import save_file

    family, name = _architecture(backbone)
    head = backbone.model.get_submodule(backbone.head_name)
    num_classes = int(getattr(head, "out_features", 0) or 0)
    if num_classes != len(label_names):
        raise InvalidValueError(f"the head has {num_classes} outputs but got {len(label_names)} label names")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    kwargs = {k: v for k, v in (backbone.extra.get("kwargs") or {}).items() if k != "num_classes"}
    pre = backbone.preprocessing
    pretrained_cfg: dict[str, Any] = {
        "input_size": [3, int(input_size), int(input_size)],
        "interpolation": str(interpolation),
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "crop_pct": float(crop_pct),
        "crop_mode": "center",
        "num_classes": num_classes,
    }
    config: dict[str, Any] = {"architecture": name, "num_classes": num_classes}
    if family == "timm":
        cfg = getattr(backbone.model, "pretrained_cfg", None) or {}
        for key in ("first_conv", "classifier"):
            if cfg.get(key):
                pretrained_cfg[key] = cfg[key]
        pretrained_cfg["fixed_input_size"] = bool(cfg.get("fixed_input_size", False))
        config["num_features"] = int(getattr(backbone.model, "num_features", 0) or 0)
        pool = getattr(getattr(backbone.model, "global_pool", None), "pool_type", None)
        if isinstance(pool, str) and pool:
            config["global_pool"] = pool
    config["label_names"] = [str(c) for c in label_names]
    if kwargs:
        config["model_args"] = _jsonable(kwargs)
    config["pretrained_cfg"] = pretrained_cfg
    config["autotransfer"] = {
        "format": MODEL_DIR_FORMAT,
        "library": family,
        "arch": f"{'timm' if family == 'timm' else 'tv'}:{name}",
        "source_spec": portable_model_spec(backbone.spec),
        **_jsonable(extra or {}),
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    weights = directory / WEIGHTS_NAME
    save_file(state, str(weights), metadata={"format": "pt"})
    os.chmod(weights, stat.S_IMODE((directory / CONFIG_NAME).stat().st_mode))
    return config


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of a model folder; anything missing is a one-line ``UserError``."""
    directory = Path(directory).expanduser()
    hint = "give the folder `autotransfer tune` or `train --config` wrote (config.json + model.safetensors)"
    if not directory.exists():
        raise UserError(f"model folder not found: {str(directory)!r}; {hint}")
    if not directory.is_dir():
        raise UserError(f"{str(directory)!r} is not a folder; {hint}")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{str(directory)!r} has no {CONFIG_NAME}; {hint}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise UserError(f'{str(path)!r} has no "architecture" string; {hint}')
    num_classes = config.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"{str(path)!r} needs a positive integer num_classes, but got {num_classes!r}")
    labels = config.get("label_names")
    if labels is None:
        config["label_names"] = [str(i) for i in range(num_classes)]
    elif not isinstance(labels, list) or len(labels) != num_classes:
        raise UserError(
            f"{str(path)!r}: label_names must list {num_classes} names (one per output), but got {labels!r:.80}"
        )
    if not isinstance(config.get("pretrained_cfg", {}), dict):
        raise UserError(f"{str(path)!r}: pretrained_cfg must be a mapping")
    if not (directory / WEIGHTS_NAME).is_file():
        raise UserError(f"{str(directory)!r} has no {WEIGHTS_NAME}; {hint}")
    return config


def model_library(config: dict[str, Any]) -> str:
    own = config.get("autotransfer") or {}
    library = own.get("library") if isinstance(own, dict) else None
    return library if library in ("timm", "torchvision") else "timm"


def model_dir_preprocessing(config: dict[str, Any]) -> Preprocessing:
    """The folder's preprocessing: mean, std, square input size and interpolation of ``pretrained_cfg``."""
    cfg = config.get("pretrained_cfg") or {}
    try:
        size = cfg.get("input_size", [3, 224, 224])
        pre = Preprocessing(
            mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
            input_size=int(size[-1]),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )
    except (TypeError, ValueError, IndexError) as err:
        raise UserError(f"bad pretrained_cfg in the model folder's config.json ({err})") from None
    if len(pre.mean) != 3 or len(pre.std) != 3 or min(pre.std) <= 0 or pre.input_size < 1:
        raise UserError(f"pretrained_cfg needs 3 means, 3 positive stds and an input size, but got {cfg!r:.120}")
    return pre


def model_args(config: dict[str, Any]) -> dict[str, Any]:
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise UserError(f"model_args in config.json must be a mapping, but got {args!r:.80}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if k != "num_classes"}


def build_model(directory: str | Path, config: dict[str, Any] | None = None) -> nn.Module:
    """The folder's model with its trained weights (head included), on the CPU, in eval mode.

    timm folders are built as ``timm.create_model(architecture, num_classes=..., **model_args)``,
    torchvision ones as ``torchvision.models.get_model(...)``; the weights must fit exactly and be
    finite (a NaN or infinite tensor is a ``UserError`` naming the file).
    """
    directory = Path(directory).expanduser()
    config = config if config is not None else read_model_config(directory)
    name, num_classes, args = config["architecture"], int(config["num_classes"]), model_args(config)
    try:
        if model_library(config) == "torchvision":
            from torchvision import models as tvm

            model = tvm.get_model(name, weights=None, num_classes=num_classes, **args)
        else:
            import timm

            if not timm.is_model(name):
                raise UserError(f"config.json names {name!r}, which this timm ({timm.__version__}) does not know")
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **args)
    except UserError:
        raise
    except Exception as err:  # unknown name, bad model_args
        raise UserError(f"cannot build {name!r} from {str(directory)!r} ({type(err).__name__}: {err})") from None
    weights = directory / WEIGHTS_NAME
    state = read_state_dict(weights)
    _check_finite(state, weights)
    load_into(model, state, str(weights))
    return model.eval()


def _check_finite(state: dict[str, Any], weights: Path) -> None:
    """Refuse weights holding NaN or infinite values (a run that diverged, a damaged copy): they
    would predict ``nan`` for every image. The ``UserError`` names the file and the tensors."""
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise UserError(
            f"{str(weights)!r} is broken: {len(bad)} of its {len(state)} tensors hold NaN or infinite values"
            f" ({shown}); write the model again (autotransfer tune or train --config)"
        )


def ensemble_member_dirs(directory: str | Path, config: dict[str, Any] | None = None) -> list[Path]:
    """The model folders whose mean softmax is the model at ``directory``: ``[directory]`` for a
    single network, else every folder listed in ``config["autotransfer"]["ensemble"]["members"]``
    (``"."`` is the folder itself). Each entry must be a relative path inside ``directory``
    holding a model folder with the same classes and preprocessing, else a one-line ``UserError``.
    """
    directory = Path(directory).expanduser()
    config = config if config is not None else read_model_config(directory)
    own = config.get("autotransfer") or {}
    ensemble = own.get("ensemble") if isinstance(own, dict) else None
    if not ensemble:
        return [directory]
    listed = ensemble.get("members") if isinstance(ensemble, dict) else None
    where = str(directory / CONFIG_NAME)
    if not isinstance(listed, list) or not listed or not all(isinstance(m, str) for m in listed):
        raise UserError(f"{where!r}: autotransfer.ensemble.members must list member folders, but got {listed!r:.80}")
    root = directory.resolve()
    out = []
    for entry in listed:
        path = (directory / entry).resolve()
        if Path(entry).is_absolute() or (path != root and root not in path.parents):
            raise UserError(
                f"{where!r}: ensemble member {entry!r} lies outside the model folder; members are sub-folders"
            )
        member = read_model_config(path)
        if member["label_names"] != config["label_names"] or model_dir_preprocessing(member) != model_dir_preprocessing(
            config
        ):
            raise UserError(
                f"{where!r}: ensemble member {entry!r} has other classes or preprocessing than the folder; write the"
                " model again with `autotransfer tune` or `train --config`"
            )
        out.append(path)
    return out
