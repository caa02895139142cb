"""The model card's Hugging Face parts: the front matter timm's hub writer puts on a card, the
licences, and how to load the folder with timm (an ensemble: every member's softmax averaged).

The front matter follows ``timm.models._hub.generate_readme`` (what ``push_to_hf_hub`` writes):
``tags`` (``image-classification``, ``timm``), ``pipeline_tag``, ``library_name``, ``license``
and, where known, ``datasets`` (the target's hub id, then the source's pretraining data). timm
writes ``apache-2.0`` when it knows nothing; this card writes the source weights' licence where
it is known and ``other`` where not (a user's own weights file, torchvision's weights), and
names the dataset's licence in the body.
"""

from __future__ import annotations

from typing import Any

__all__ = ["front_matter", "source_licence", "hub_datasets", "licence_lines", "load_lines"]

#: Hub ids of the builtin datasets that have one (``builtin:NAME`` -> dataset id).
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist", "mnist5k": "ylecun/mnist"}
#: timm pretrained tags' dataset tokens (``a1_in1k``, ``in12k_ft_in1k``) -> hub ids, as timm's cards name them.
_TAG_DATASETS = {"in1k": "imagenet-1k", "in12k": "imagenet-12k", "in21k": "imagenet-21k", "in22k": "imagenet-22k"}


def _timm_cfg(name: str):
    """timm's pretrained config of ``name`` (``arch`` or ``arch.tag``), or ``None``."""
    try:
        import timm

        return timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown name: nothing known about its weights
        return None


def source_licence(spec: str) -> str | None:
    """The licence of the weights ``spec`` names (lower case, as the hub spells it), or ``None``.

    The EfficientNet-Lite weights are Google's TF checkpoints (Apache-2.0, as timm's
    ``tf_efficientnet_lite*`` list them); ``fashion-source`` is autotransfer's own (Apache-2.0);
    ``timm:NAME`` reads timm's pretrained config. A local weights file (``NAME@FILE``) and
    torchvision's weights (licences vary by model) are unknown.
    """
    spec = str(spec or "")
    if "@" in spec:
        return None
    if spec.startswith("efficientnet_lite") or spec == "fashion-source":
        return "apache-2.0"
    if spec.startswith("timm:"):
        cfg = _timm_cfg(spec[len("timm:") :])
        licence = getattr(cfg, "license", None)
        return str(licence).lower() if licence else None
    return None


def _pretraining(spec: str) -> list[str]:
    """Hub ids of the data the source weights were trained on, where known."""
    if "@" in spec:
        return []
    if spec.startswith("efficientnet_lite"):
        return ["imagenet-1k"]
    if spec == "fashion-source":
        return [HUB_DATASETS["fashion-mnist"]]
    if spec == "digit-source":
        return [HUB_DATASETS["mnist5k"]]
    if spec.startswith("timm:"):
        tag = str(getattr(_timm_cfg(spec[len("timm:") :]), "tag", "") or "")
        return [_TAG_DATASETS[t] for t in tag.split("_") if t in _TAG_DATASETS]
    return []


def _builtin(target: Any) -> str | None:
    """``NAME`` of a ``builtin:NAME[?options]`` target, else ``None``."""
    if not isinstance(target, str) or not target.startswith("builtin:"):
        return None
    return target[len("builtin:") :].partition("?")[0]


def hub_datasets(config: dict[str, Any]) -> list[str]:
    """The front matter's ``datasets``: the target's hub id (builtins that have one), then the
    source's pretraining data; each once, in that order."""
    own = config.get("autotransfer") or {}
    target = _builtin((own.get("settings") or {}).get("target"))
    found = [HUB_DATASETS[target]] if target in HUB_DATASETS else []
    found += _pretraining(str(own.get("source_spec") or ""))
    return list(dict.fromkeys(found))


def front_matter(config: dict[str, Any]) -> list[str]:
    """The card's YAML front matter, as lines (``---`` to ``---``); ``yaml.safe_load`` reads it."""
    own = config.get("autotransfer") or {}
    timm_ok = own.get("library", "timm") == "timm"
    tags = ["image-classification", "timm"] if timm_ok else ["image-classification", "pytorch", "torchvision"]
    lines = ["---", "tags:", *(f"- {t}" for t in [*tags, "autotransfer", "transfer-learning"])]
    lines += [
        "pipeline_tag: image-classification",
        f"library_name: {'timm' if timm_ok else 'pytorch'}",
        f"license: {source_licence(str(own.get('source_spec') or '')) or 'other'}",
    ]
    datasets = hub_datasets(config)
    if datasets:
        lines += ["datasets:", *(f"- {d}" for d in datasets)]
    return [*lines, "---"]


def licence_lines(config: dict[str, Any]) -> list[str]:
    """The card's "Licence" section: the source weights' licence and the training data's."""
    own = config.get("autotransfer") or {}
    spec = str(own.get("source_spec") or "")
    target = (own.get("settings") or {}).get("target")
    licence = source_licence(spec)
    weights = f"under `{licence}`" if licence else "under a licence autotransfer does not know (`other` above)"
    name = _builtin(target)
    data = f"`{target}`, a dataset given by the user: its terms apply"
    if name:
        from autotransfer.data.builtin import list_builtins

        known = {b.name: b.licence for b in list_builtins()}
        data = f"`{target}`, under {known[name]}" if name in known else data
    return [
        "",
        "## Licence",
        "",
        f"- The weights were fine-tuned from `{spec}`, whose weights are {weights}.",
        f"- They were trained on {data}.",
        "- Check both before you share or reuse the model.",
    ]


def load_lines(config: dict[str, Any], shown: str) -> list[str]:
    """The card's timm snippet: ``shown`` is the folder's path relative to the folder holding it.

    A single network is one ``timm.create_model("local-dir:...")``. An ensemble is not: timm reads
    the first member alone, so the snippet builds every member folder and averages their softmax,
    which gives ``autotransfer.load_model``'s probabilities. Either way ``proba`` is ``(1, K)``.
    """
    own = config.get("autotransfer") or {}
    ensemble = own.get("ensemble") or {}
    members = [str(m) for m in ensemble.get("members") or []]
    if own.get("library", "timm") != "timm":
        return ["", "This architecture comes from torchvision: timm cannot build it; `autotransfer.load_model` can."]
    head = [
        "",
        "```python",
        "import timm, torch",
        "from PIL import Image",
        'image = Image.open("image.png").convert("RGB")',
    ]
    tail = ['label = model.pretrained_cfg["label_names"][proba.argmax(1).item()]', "```"]
    if not members:
        return [
            "",
            f"With timm (the path is relative to the folder that holds `{shown}`):",
            *head,
            f'model = timm.create_model("local-dir:{shown}", pretrained=True).eval()',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
            "with torch.no_grad():",
            "    proba = model(transform(image)[None]).softmax(1)",
            *tail,
        ]
    folders = ", ".join(f'"{shown}"' if m == "." else f'"{shown}/{m}"' for m in members)
    first = (ensemble.get("member_test_scores") or [None])[0]
    alone = "" if first is None else f" (its test score alone: {float(first):.4f})"
    return [
        "",
        f'With timm: `timm.create_model("local-dir:{shown}", pretrained=True)` builds the first member'
        f" alone{alone}, not this ensemble. The ensemble's prediction is the mean of its {len(members)}"
        " members' softmax, as `autotransfer.load_model` gives it (paths relative to the folder that"
        f" holds `{shown}`):",
        *head,
        f"folders = [{folders}]",
        "proba = 0",
        "with torch.no_grad():",
        "    for folder in folders:",
        '        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()',
        "        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
        "        proba = proba + model(transform(image)[None]).softmax(1) / len(folders)",
        *tail,
    ]
