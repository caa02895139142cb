"""Export a study's best protocol with its provenance (YAML / JSON), as timm train.py arguments or as a
training script, and read it back.

Over 400 lines: the export payload, its three file formats and the timm mapping (what each
autotransfer choice becomes in timm's train.py, and what it cannot express) read the same payload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import yaml

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.core.knobs import TRIAL_KNOBS
from autotransfer.core.schema import FREEZE_ATTR, NUM_GROUPS_ATTR, REINIT_ATTR

__all__ = [
    "EXPORT_FORMATS",
    "export_payload",
    "write_export",
    "read_export",
    "SourceModel",
    "source_backbone",
    "source_model",
    "write_source_weights",
    "weights_path",
    "timm_args",
    "timm_unexpressed",
    "TIMM_TRAIN_KEYS",
    "not_expressed",
]

EXPORT_FORMATS = ("yaml", "json", "timm", "script")
#: Formats that write a weights file beside the output, so they need an output path.
FILE_FORMATS = ("timm", "script")
_SCHEMA = "autotransfer/protocol-export/v1"


def export_payload(study) -> dict[str, Any]:
    """The best transfer protocol of ``study`` with everything needed to reproduce it.

    Keys: ``protocol`` (searched values of the trial the study hands back), ``pick`` (the rule),
    ``members`` (every trial whose retrain forms the handed-back model, the first being
    ``protocol``'s: more than one for an ensemble; each with its protocol, validation score and
    the split its final model trained on), ``derived`` (lr and freeze/reinit for the model's G),
    ``settings`` (model spec, dataset spec + fingerprint, seed, budget...), ``metric``,
    ``scores`` (validation, and test when the study was finished by ``tune``), ``controls``
    (the best validation score of the from-scratch and linear-probe controls),
    ``task_profile``, ``versions``.
    """
    from autotransfer.core.protocol import Protocol
    from autotransfer.core.schema import CONTROL_ATTR
    from autotransfer.search.study import best_transfer_trial, control_trials, read_attr, read_settings

    best = best_transfer_trial(study)
    if best is None:
        raise UserError(f"study {study.study_name!r} has no completed transfer trial yet: run tune on it first")
    settings = read_settings(study)
    protocol = Protocol.from_dict(best.params)
    final = read_attr(study, "final") or {}
    profile = read_attr(study, "profile") or {}
    pick = read_attr(study, "pick") or {}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    numbers = [int(n) for n in pick.get("members") or [best.number] if int(n) in trials]
    trained_on = final.get("member_trained_on") if final.get("members") == numbers else None
    members = [
        {
            "trial": n,
            "protocol": Protocol.from_dict(trials[n].params).to_dict(),
            "freeze": trials[n].user_attrs.get(FREEZE_ATTR),
            "reinit": trials[n].user_attrs.get(REINIT_ATTR),
            "val": trials[n].value,
            "trained_on": (trained_on or [])[i] if trained_on and i < len(trained_on) else "train+val",
        }
        for i, n in enumerate(numbers)
    ]
    return {
        "schema": _SCHEMA,
        "study": study.study_name,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": protocol.to_dict(),
        "derived": {
            "lr": protocol.lr,
            "elr": protocol.elr,
            "freeze": best.user_attrs.get(FREEZE_ATTR),
            "reinit": best.user_attrs.get(REINIT_ATTR),
            "num_groups": best.user_attrs.get(NUM_GROUPS_ATTR),
        },
        "trial": best.number,
        "pick": pick.get("rule"),
        "members": members,
        "metric": settings.metric,
        "scores": {"val": best.value, "test": final.get("test_score")},
        "controls": _control_scores(control_trials(study), CONTROL_ATTR),
        "settings": settings.to_dict(),
        "task_profile": profile,
        "versions": read_attr(study, "versions") or {},
    }


def _control_scores(trials, attr: str) -> dict[str, float | None]:
    """Best validation score of each control kind (``scratch``, ``probe``: the trials' ``attr``
    user attribute); ``None`` for a kind that did not run."""
    scores: dict[str, float | None] = {"scratch": None, "probe": None}
    for t in trials:
        kind = t.user_attrs.get(attr)
        if kind in scores and t.value is not None and (scores[kind] is None or t.value > scores[kind]):
            scores[kind] = float(t.value)
    return scores


@dataclass(frozen=True)
class SourceModel:
    """The source model as the study used it, for exports that train outside autotransfer.

    Attributes:
        architecture: timm's model name (``tf_efficientnet_lite0`` for the built-in Lite weights).
        model_kwargs: constructor arguments beside ``num_classes`` (timm's ``--model-kwargs``).
        fresh_kwargs: the arguments autotransfer builds the fresh model with that re-initialised
            groups copy from (``backbones.surgery.reinit``).
        num_classes: outputs of the new head.
        mean, std: the source's normalisation.
        groups: module names per depth group, stem first, head excluded.
        group_names: the groups' names, as ``autotransfer models NAME --groups`` prints them.
        head: the classifier's module name.
    """

    architecture: str
    model_kwargs: dict[str, Any]
    fresh_kwargs: dict[str, Any]
    num_classes: int
    mean: tuple[float, ...]  # per channel: three for RGB models
    std: tuple[float, ...]
    groups: list[list[str]]
    group_names: list[str]
    head: str

    @property
    def num_groups(self) -> int:
        return len(self.groups)


def source_backbone(payload: dict[str, Any]):
    """The export's source model with its new zero head, as every trial of the study started
    (``create_backbone(settings.model, num_classes)``); a ``UserError`` for a model timm cannot build."""
    from autotransfer.backbones import create_backbone

    settings = payload["settings"]
    spec, classes = settings.get("model"), settings.get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        raise UserError(f"the export's settings have no num_classes ({classes!r}): export the study again")
    torchvision = str(spec).startswith(("tv:", "torchvision:"))  # refused before fetching any weights
    backbone = None if torchvision else create_backbone(str(spec), num_classes=classes)
    if backbone is None or not str(backbone.extra.get("arch") or "").startswith("timm:"):
        raise UserError(
            f"model {spec!r} is not a timm architecture, so timm's train.py and the script cannot build it:"
            " use `autotransfer export STUDY -o best.yaml` and `autotransfer train --config best.yaml`"
        )
    return backbone


def source_model(backbone) -> SourceModel:
    """What an outside trainer needs to know of ``backbone`` (``source_backbone``): its timm name and
    arguments, its normalisation, and its depth groups as module names. Refuses (``UserError``) a
    backbone whose groups are not whole modules (parameters held by the model itself)."""
    from autotransfer.backbones.surgery import head_params

    cfg = getattr(backbone.model, "pretrained_cfg", None) or {}
    architecture = str(cfg.get("architecture") or backbone.extra["arch"][len("timm:") :])
    fresh = {k: _plain(v) for k, v in (backbone.extra.get("kwargs") or {}).items()}
    groups = [list(g.modules) for g in backbone.groups]
    names = [n for n, _ in backbone.model.named_parameters()]
    for group, modules in zip(backbone.groups, groups):
        covered = [n for n in names if any(n.startswith(m + ".") for m in modules)]
        if covered != list(group.params):
            raise UserError(
                f"the depth group {group.name!r} of {backbone.spec!r} is not made of whole modules,"
                " so it cannot be written as module names: use `autotransfer train --config`"
            )
    head = backbone.head_name
    if sorted(head_params(backbone)) != sorted(n for n in names if n.startswith(head + ".")):
        raise UserError(
            f"the head of {backbone.spec!r} is not the module {head!r} alone: use `autotransfer train --config`"
        )
    pre = backbone.preprocessing
    return SourceModel(
        architecture=architecture,
        model_kwargs={k: v for k, v in fresh.items() if k != "num_classes"},
        fresh_kwargs=fresh,
        num_classes=int(backbone.model.get_submodule(head).out_features),
        mean=tuple(float(v) for v in pre.mean),
        std=tuple(float(v) for v in pre.std),
        groups=groups,
        group_names=[g.name for g in backbone.groups],
        head=head,
    )


def write_source_weights(backbone, path: str | Path) -> Path:
    """Save ``backbone``'s weights (the source's, with the new zero-initialised head) in timm's key
    names as safetensors: the file ``timm.create_model(NAME, num_classes=C, checkpoint_path=path)``
    loads strictly, every key matched. The file gets the mode the umask gives a new file
    (safetensors alone writes 0600), like the export beside it."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    path.write_bytes(save(state, metadata={"format": "pt"}))  # a plain file write: the umask's mode
    return path


def weights_path(path: str | Path) -> Path:
    """The weights file an args or script file at ``path`` refers to: ``<stem>-init.safetensors`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}-init.safetensors")


def dataset_flips(target: str) -> bool:
    """Whether autotransfer flips ``target``'s images in its augmentation (``ImageDataset.flip``):
    never for the built-ins marked so (digits, MNIST), always for folders and manifests."""
    from autotransfer.data.builtin import resolve_builtin
    from autotransfer.data.sources import split_spec

    base, _ = split_spec(target)
    if base.startswith("builtin:"):
        return bool(resolve_builtin(base[len("builtin:") :]).flip)
    return True


def crop_ranges() -> tuple[tuple[float, float], tuple[float, float]]:
    """The random-resized crop's area and aspect-ratio ranges of autotransfer's augmentation
    (``DeviceBatches``' defaults, which the study's batches use)."""
    from autotransfer.data.device import DeviceBatches

    defaults = cast(dict[str, Any], DeviceBatches.__init__.__kwdefaults__)  # it has keyword-only defaults
    return tuple(defaults["scale"]), tuple(defaults["ratio"])


def member_protocols(payload: dict[str, Any], num_groups: int) -> list[dict[str, Any]]:
    """Each model of the export's handed-back model (one, or an ensemble's members, the first being
    ``protocol``'s): its trial, lr, freeze and re-init depths for ``num_groups`` groups, and the other
    protocol values, as ``search.objective.train_config_for`` turns them into a training run."""
    from autotransfer.core.protocol import Protocol

    listed = payload.get("members") or [
        {"trial": payload.get("trial"), "protocol": payload["protocol"], "trained_on": "train+val"}
    ]
    out = []
    for member in listed:
        protocol = Protocol.from_dict(member["protocol"])
        out.append(
            {
                "trial": member.get("trial"),
                "trained_on": member.get("trained_on") or "train+val",
                **protocol.trial_values(num_groups),
            }
        )
    return out


def fit_images(payload: dict[str, Any], member: dict[str, Any]) -> int:
    """How many images ``member``'s final model trained on: train+val, or train after a fallback."""
    settings = payload["settings"]
    n_train = int(settings.get("n_train") or 0)
    return n_train if member["trained_on"] == "train" else n_train + int(settings.get("val_images") or 0)


#: Every key ``timm_args`` may write. Each is an argument of timm's train.py in every release checked
#: (v0.9.16, v1.0.3, v1.0.15, v1.0.28 and main of August 2026). train.py takes a ``--config`` file's
#: keys as argparse defaults, so a key it does not know is accepted without a word and ignored:
#: nothing outside this set is ever written.
TIMM_TRAIN_KEYS = frozenset(
    {
        "model",
        "model_kwargs",
        "pretrained",
        "initial_checkpoint",
        "num_classes",
        "img_size",
        "mean",
        "std",
        "interpolation",
        "crop_pct",
        "batch_size",
        "opt",
        "momentum",
        "opt_betas",
        "lr",
        "weight_decay",
        "sched",
        "sched_on_updates",
        "epochs",
        "warmup_epochs",
        "cooldown_epochs",
        "min_lr",
        "no_aug",
        "scale",
        "ratio",
        "train_interpolation",
        "hflip",
        "vflip",
        "color_jitter",
        "smoothing",
        "seed",
    }
)


def timm_args(payload: dict[str, Any], source: SourceModel, weights: str | Path) -> dict[str, Any]:
    """Arguments for timm's ``train.py --config args.yaml`` that train.py means as autotransfer does,
    for the protocol the study hands back (the first member of an ensemble); ``weights`` is the file
    ``write_source_weights`` wrote. What timm cannot express is left out: ``timm_unexpressed``.

    - ``opt: momentum`` is SGD with classical momentum (timm's ``sgd`` is Nesterov); AdamW gets
      ``opt_betas: [momentum, 0.999]``, autotransfer's betas.
    - The lr schedule is cosine from ``lr`` to 0, stepped per update, with no warm-up or cool-down.
      timm counts epochs of ``floor(N / batch)`` updates, so ``epochs`` is the whole number of epochs
      closest to the study's step budget on the N images the model trained on (``timm_updates``).
    - ``pretrained: false`` with ``initial_checkpoint``: the source weights as the study used them,
      in timm's key names, with the new zero-initialised head; timm loads them strictly.
    - Augmentation: the random-resized crop's ranges, bilinear, flips only where autotransfer flips
      the dataset, no colour jitter, no label smoothing; ``no_aug`` when the study did not augment.
    """
    settings = payload["settings"]
    member = member_protocols(payload, source.num_groups)[0]
    scale, ratio = crop_ranges()
    augment = bool(settings.get("augment", True))
    args: dict[str, Any] = {"model": source.architecture}
    if source.model_kwargs:
        args["model_kwargs"] = dict(source.model_kwargs)
    args.update(
        {
            "pretrained": False,
            "initial_checkpoint": str(Path(weights).resolve()),
            "num_classes": source.num_classes,
            "img_size": int(settings["resolution"]),
            "mean": list(source.mean),
            "std": list(source.std),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "batch_size": int(settings["batch_size"]),
        }
    )
    mapped = {k.timm: member[k.name] for k in TRIAL_KNOBS if k.timm}  # as core.knobs maps them
    if settings["optimizer"] == "sgd":
        args.update({"opt": "momentum", "momentum": mapped.pop("momentum")})
    else:
        args.update({"opt": "adamw", "opt_betas": [mapped.pop("momentum"), 0.999]})
    args.update(mapped)
    args.update(
        {
            "sched": "cosine",
            "sched_on_updates": True,
            "epochs": timm_updates(payload, member)[0],
            "warmup_epochs": 0,
            "cooldown_epochs": 0,
            "min_lr": 0.0,
            "no_aug": not augment,
            "scale": list(scale),
            "ratio": list(ratio),
            "train_interpolation": "bilinear",
            "hflip": 0.5 if augment and dataset_flips(settings["target"]) else 0.0,
            "vflip": 0.0,
            "color_jitter": 0.0,
            "smoothing": 0.0,
            "seed": int(settings["seed"]),
        }
    )
    unknown = sorted(set(args) - TIMM_TRAIN_KEYS)
    if unknown:  # a programming error: train.py would ignore these without a word
        raise InvalidValueError(f"timm_args wrote keys timm's train.py does not know: {unknown}")
    return args


def timm_updates(payload: dict[str, Any], member: dict[str, Any]) -> tuple[int, int, int]:
    """``(epochs, updates per epoch, updates)`` of timm's train.py closest to the study's step
    budget, on the images ``member`` trained on (train.py drops each epoch's last partial batch)."""
    steps, batch = int(payload["settings"]["steps"]), int(payload["settings"]["batch_size"])
    per_epoch = fit_images(payload, member) // batch
    epochs = max(1, round(steps / per_epoch)) if per_epoch else 1
    return epochs, per_epoch, epochs * per_epoch


def timm_unexpressed(payload: dict[str, Any], source: SourceModel) -> list[str]:
    """What timm's train.py cannot express of the handed-back model, one short line each; empty
    when it expresses all of it."""
    members = member_protocols(payload, source.num_groups)
    m, G = members[0], source.num_groups
    f, r = m["freeze"], m["reinit"]
    kept = G - f - r  # trainable groups that keep their pretrained weights
    lines = []
    if f == G:
        lines.append(f"freezing: all {G} groups get no gradient and run BatchNorm in eval mode (a linear probe)")
    elif f:
        lines.append(
            f"freezing: groups 0-{f - 1} of {G} ({', '.join(source.group_names[:f])})"
            " get no gradient and run BatchNorm in eval mode"
        )
    if r:
        lines.append(
            f"re-initialisation: the last {r} of {G} groups ({', '.join(source.group_names[G - r :])})"
            f" start from fresh weights (seed {payload['settings']['seed']})"
        )
    if m["head_lr_mult"] != 1.0:
        lines.append(f"head lr multiplier: the new head trains at lr x {m['head_lr_mult']:.3g}; timm trains it at lr")
    if m["bn_mode"] == "frozen" and kept:
        lines.append(
            "BN mode 'frozen': BatchNorm of the trainable pretrained groups runs in eval mode (source statistics)"
        )
    if m["l2sp"] > 0 and kept:
        lines.append(
            f"L2-SP: alpha/2 ||w - w0||^2 with alpha = {m['l2sp']:.3g} towards the source weights (instead of weight decay on them)"
        )
    if m["layer_decay"] < 1.0 and G - f > 1:
        lines.append(
            f"layer decay {m['layer_decay']:.3g} per depth group ({G} coarse groups; timm's layer_decay spans"
            " its finer layers, so it is left out)"
        )
    staged = _schedule_line(payload, m, G, source.group_names)
    if staged:
        lines.append(staged)
    if len(members) > 1:
        trials = ", ".join(str(x["trial"]) for x in members)
        lines.append(
            f"ensemble: the handed-back model averages {len(members)} networks (trials {trials});"
            " these args train the first alone"
        )
    pseudo = _pseudo_line(payload)
    if pseudo:
        lines.append(pseudo)
    return lines


def _pseudo_line(payload: dict[str, Any]) -> str | None:
    """What no export reproduces of a self-trained model (its pseudo-labelled images), or ``None``."""
    members = payload.get("members") or []
    pseudo = [i + 1 for i, m in enumerate(members) if "pseudo" in str(m.get("trained_on", ""))]
    if not pseudo:
        return None
    which = "the handed-back model" if len(members) == 1 else f"member(s) {', '.join(map(str, pseudo))}"
    return (
        f"self-training: {which} also trained on pseudo-labelled images of --unlabelled"
        f" {payload.get('settings', {}).get('unlabelled')!r}; this export trains on the labelled images only"
    )


def _schedule_line(payload: dict[str, Any], member: dict[str, Any], G: int, names: list[str]) -> str | None:
    """What timm cannot express of ``member``'s schedule (timm's train.py trains every unfrozen
    group from the first update: it has no stage-wise unfreezing), or ``None`` when every
    trainable group trains from the first step (``one-stage``, or no pretrained group trains)."""
    from autotransfer.core.protocol import schedule_words
    from autotransfer.train.schedule import unfreeze_steps

    steps = int(payload["settings"]["steps"])
    joins = unfreeze_steps(steps, member["schedule"], member["stage_frac"], member["freeze"], member["reinit"], G)
    if not joins:
        return None
    when = ", ".join(f"{names[g]} at step {s}" for s, g in joins)
    return (
        f"schedule {schedule_words(member)}: only the head and the"
        f" re-initialised groups train at first; the pretrained groups join ({when}, of the {steps}-step"
        " budget), each in"
        " eval mode with no gradient until then, under the one cosine lr schedule (timm's train.py has no"
        " stage-wise unfreezing)"
    )


def timm_header(payload: dict[str, Any], source: SourceModel, args: dict[str, Any]) -> str:
    """The comment block at the top of the timm args file: how to run it, what each mapped value
    means, and what timm cannot express."""
    settings = payload["settings"]
    member = member_protocols(payload, source.num_groups)[0]
    epochs, per_epoch, updates = timm_updates(payload, member)
    images = fit_images(payload, member)
    flips = "flips as autotransfer does" if args["hflip"] else "no flips (autotransfer never flips this dataset)"
    lines = [
        f"timm train.py arguments for autotransfer study {payload.get('study')!r}, trial {member['trial']}"
        f" (exported {payload.get('exported_at')}).",
        "Run: python train.py --config THIS_FILE --data-dir DATA   (DATA/train: one folder per class;"
        " DATA/validation: held-out images)",
        "What these values mean in timm, as autotransfer trained:",
        "  opt momentum: SGD with classical momentum (timm's 'sgd' is Nesterov)"
        if args["opt"] == "momentum"
        else "  opt adamw with betas (momentum, 0.999), as autotransfer",
        f"  schedule: cosine from lr to 0 per update, no warm-up; {epochs} epochs x {per_epoch} updates"
        f" = {updates} updates on {images} images at batch {settings['batch_size']} (the study's budget:"
        f" {settings['steps']} steps{'' if updates == settings['steps'] else '; timm counts whole epochs'})",
        f"  initial_checkpoint: {Path(args['initial_checkpoint']).name}, the source weights as the study used them"
        " (timm's key names, the new head zero-initialised), loaded strictly",
        f"  augmentation: random-resized crop (area {args['scale']}, ratio {[round(r, 4) for r in args['ratio']]}),"
        f" bilinear, {flips}, no colour jitter, no label smoothing"
        if not args["no_aug"]
        else "  augmentation: none (the image resized and centre-cropped, as the study trained)",
        "  autotransfer crops from the image already resized and centre-cropped to img_size; timm crops the"
        " whole image (the same for square images)",
    ]
    missing = timm_unexpressed(payload, source)
    if missing:
        lines.append(
            "timm cannot express (train.py trains without these; `autotransfer export --format script`"
            " writes a script that does):"
        )
        lines += [f"  - {line}" for line in missing]
    else:
        lines.append("timm expresses all of this protocol.")
    return "".join(f"# {line}\n" for line in lines)


def write_export(payload: dict[str, Any], path: str | Path, fmt: str = "yaml", *, backbone=None) -> Path:
    """Write ``payload`` as ``yaml``, ``json``, ``timm`` (an args YAML for timm's train.py) or ``script``
    (a Python file that trains the protocol: ``export_script``). ``timm`` and ``script`` also write the
    source weights beside ``path`` (``weights_path``), from ``backbone`` (default: ``source_backbone``)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, but got {fmt!r}")
    path = Path(path)
    if fmt in FILE_FORMATS:
        backbone = backbone if backbone is not None else source_backbone(payload)  # a refusal writes nothing
        source = source_model(backbone)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        elif fmt == "yaml":
            path.write_text(yaml.safe_dump(_plain(payload), sort_keys=False))
        elif fmt == "timm":
            weights = write_source_weights(backbone, weights_path(path))
            args = timm_args(payload, source, weights)
            path.write_text(timm_header(payload, source, args) + yaml.safe_dump(_plain(args), sort_keys=False))
        else:
            from autotransfer.handback.script import script_text

            weights = write_source_weights(backbone, weights_path(path))
            members = member_protocols(payload, source.num_groups)
            flip = dataset_flips(payload["settings"]["target"])
            path.write_text(
                script_text(
                    payload, source, weights.name, script_name=path.name, members=members, flip=flip, crop=crop_ranges()
                )
            )
    except OSError as err:
        raise UserError(
            f"cannot write {str(path)!r} ({err.strerror or err}): give -o a file in a folder you can write to"
        ) from None
    return path


def not_expressed(payload: dict[str, Any], fmt: str, source: SourceModel | None = None) -> list[str]:
    """What the ``fmt`` export leaves out of the handed-back model, one short line each (the CLI
    prints them): for ``timm``, ``timm_unexpressed``; for ``script``, the other ensemble members
    and self-training's pseudo-labelled images."""
    if fmt == "timm":
        return timm_unexpressed(payload, source or source_model(source_backbone(payload)))
    members = payload.get("members") or []
    lines = []
    if fmt == "script" and len(members) > 1:
        lines.append(
            f"ensemble: the handed-back model averages {len(members)} networks; the script trains one per run"
            f" (--member 1 to {len(members)}, default 1)"
        )
    pseudo = _pseudo_line(payload) if fmt == "script" else None
    return lines + [pseudo] if pseudo else lines


def read_export(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON export back (``yaml.safe_load``); a one-line error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {str(path)!r} does not exist: export one with `autotransfer export STUDY -o {path}`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"config {str(path)!r} is not UTF-8 text (byte {err.start} is {err.object[err.start : err.start + 1]!r}):"
            " give the YAML or JSON written by `autotransfer export`"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read config {str(path)!r} ({err.strerror or err}): check its permissions") from None
    try:
        # JSON through json: YAML 1.1 (PyYAML) reads a JSON number such as 1e-06 as a string
        payload = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise UserError(f"config {str(path)!r} is not valid JSON: {err.msg} (line {err.lineno})") from None
    except yaml.YAMLError as err:
        raise UserError(f"config {str(path)!r} is not valid YAML/JSON: {str(err).splitlines()[0]}") from err
    if not isinstance(payload, dict) or payload.get("schema") != _SCHEMA:
        raise UserError(
            f"config {str(path)!r} is not an autotransfer protocol export (schema {_SCHEMA}):"
            " use the YAML or JSON written by `autotransfer export`"
        )
    for key in ("settings", "protocol"):
        if not isinstance(payload.get(key), dict):
            raise UserError(
                f"config {str(path)!r} has no {key!r} mapping: it is an incomplete export;"
                " write it again with `autotransfer export STUDY`"
            )
    return payload


def _plain(value: Any) -> Any:
    """Plain Python values for ``yaml.safe_dump`` (tuples → lists, numpy scalars → floats)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
