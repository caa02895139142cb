"""The ONNX file ``export-model`` writes: its input, output and metadata, the ``[onnx]`` extra, reading one back.

The graph takes ``pixel_values``, ``(B, 3, S, S)`` float32 images already preprocessed as the model
folder says (shorter side resized to ``S`` with its interpolation, centre crop, ``(x / 255 - mean)
/ std``), and returns ``probabilities``, ``(B, K)`` float32 softmax (an ensemble's: the mean of its
members' softmax). ``B`` is dynamic. The preprocessing and the class names travel in the model's
``metadata_props``, each value a JSON string (``METADATA_KEYS``), so the file alone is enough to
use it: ``autotransfer.load_model(FILE.onnx)`` reads them and applies the same preprocessing as
for the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotransfer.core.errors import UserError
from autotransfer.core.knobs import check_device

__all__ = [
    "ONNX_FORMAT",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OPSET",
    "METADATA_KEYS",
    "OnnxMetadata",
    "require_onnx",
    "onnx_metadata",
    "open_onnx",
]

ONNX_FORMAT = "autotransfer/onnx/v1"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "probabilities"
#: The default domain's opset the graph is written in (ONNX Runtime >= 1.14 runs it).
OPSET = 18
#: ``metadata_props`` keys, each value a JSON string: ``format`` (``ONNX_FORMAT``), ``version`` (of
#: autotransfer that wrote it), ``classes`` (``K`` names, output order), ``preprocessing``
#: (``input_size`` ``[3, S, S]``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``,
#: ``scale``), ``model`` (``kind`` ``single`` or ``ensemble``, ``members``, ``architecture``,
#: ``input``, ``output``) and ``config`` (the folder's config.json, for ``evaluate``'s test split).
METADATA_KEYS = ("format", "version", "classes", "preprocessing", "model", "config")
_PREFIX = "autotransfer."
_INSTALL = "pip install 'autotransfer[onnx]'"


@dataclass
class OnnxMetadata:
    """What an ONNX file says about itself (``metadata_props``, parsed).

    Attributes:
        classes: the ``K`` class names; column ``i`` of the output is ``classes[i]``.
        config: a model folder's ``config.json`` rebuilt from the metadata (``pretrained_cfg`` is
            the file's preprocessing), so ``backbones.model_dir.model_dir_preprocessing`` reads it.
        model: ``kind``, ``members``, ``architecture``.
        version: the autotransfer version that wrote the file.
    """

    classes: list[str]
    config: dict[str, Any]
    model: dict[str, Any]
    version: str


def require_onnx(*modules: str, what: str = "ONNX export") -> None:
    """A one-line ``UserError`` naming the extra when any of ``modules`` cannot be imported."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UserError(f"{what} needs {' and '.join(missing)}, which {verb} not installed: {_INSTALL}")


def onnx_metadata(config: dict[str, Any], members: int, version: str) -> dict[str, str]:
    """The ``metadata_props`` (key -> JSON string) of a model folder's ``config`` exported as
    one graph of ``members`` networks."""
    cfg = config.get("pretrained_cfg") or {}
    size = int((cfg.get("input_size") or [3, 224, 224])[-1])
    preprocessing = {
        "input_size": [3, size, size],
        "mean": [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))],
        "std": [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))],
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
        "crop_mode": str(cfg.get("crop_mode", "center")),
        "scale": "shorter side resized to the input size, centre crop, then (x / 255 - mean) / std, NCHW RGB",
    }
    model = {
        "kind": "ensemble" if members > 1 else "single",
        "members": int(members),
        "architecture": str(config.get("architecture", "")),
        "input": f"{INPUT_NAME}: (batch, 3, {size}, {size}) float32, preprocessed",
        "output": f"{OUTPUT_NAME}: (batch, {len(config['label_names'])}) float32 softmax"
        + (f", the mean of {members} members'" if members > 1 else ""),
    }
    values: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "version": version,
        "classes": [str(c) for c in config["label_names"]],
        "preprocessing": preprocessing,
        "model": model,
        "config": config,
    }
    return {
        _PREFIX + key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in values.items()
    }


def _parse(meta: dict[str, str], where: str) -> OnnxMetadata:
    hint = "export it again with `autotransfer export-model DIR --format onnx`"
    if meta.get(_PREFIX + "format") != ONNX_FORMAT:
        raise UserError(f"{where!r} is not an ONNX file autotransfer wrote (no {_PREFIX}format metadata); {hint}")
    try:
        classes = json.loads(meta[_PREFIX + "classes"])
        pre = json.loads(meta[_PREFIX + "preprocessing"])
        model = json.loads(meta[_PREFIX + "model"])
        config = json.loads(meta.get(_PREFIX + "config") or "{}")
    except (KeyError, json.JSONDecodeError) as err:
        raise UserError(f"{where!r} has broken autotransfer metadata ({type(err).__name__}: {err}); {hint}") from None
    if not isinstance(classes, list) or not classes or not isinstance(pre, dict) or not isinstance(config, dict):
        raise UserError(f"{where!r} has broken autotransfer metadata (classes or preprocessing); {hint}")
    config = {**config, "label_names": [str(c) for c in classes], "num_classes": len(classes)}
    config["pretrained_cfg"] = {k: v for k, v in pre.items() if k != "scale"}
    return OnnxMetadata(
        classes=[str(c) for c in classes],
        config=config,
        model=model if isinstance(model, dict) else {},
        version=str(meta.get(_PREFIX + "version", "")),
    )


def open_onnx(path: str | Path, *, device: str = "cpu", threads: int | None = None) -> tuple[Any, OnnxMetadata]:
    """``(onnxruntime.InferenceSession, its metadata)`` of the file ``path``.

    ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (a ``UserError`` when onnxruntime has no CUDA
    provider) or ``auto`` (CUDA when onnxruntime has it): ``core.knobs.check_device``'s forms. ``threads``: intra-op threads (default onnxruntime's).
    A missing or unreadable file, or one autotransfer did not write, is a one-line ``UserError``.
    """
    require_onnx("onnxruntime", what="an .onnx model")
    import onnxruntime as ort

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"ONNX model not found: {str(path)!r}; give a file `autotransfer export-model` wrote")
    check_device(device, "--device")
    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise UserError(
            f"--device {device}: this onnxruntime has no CUDA provider; install onnxruntime-gpu or use --device cpu"
        )
    use_cuda = device != "cpu" and "CUDAExecutionProvider" in available
    gpu = {"device_id": int(device.partition(":")[2])} if ":" in device else {}
    cuda: Any = ("CUDAExecutionProvider", gpu) if gpu else "CUDAExecutionProvider"  # cuda:N: GPU N
    providers: list[Any] = ([cuda] if use_cuda else []) + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own classes for a file that is not a graph
        raise UserError(f"cannot read {str(path)!r} as an ONNX model ({type(err).__name__})") from None
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise UserError(f"{str(path)!r} has inputs/outputs {names}, not [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]")
    return session, _parse(dict(session.get_modelmeta().custom_metadata_map), str(path))
