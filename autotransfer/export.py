"""Export a study's best protocol with its provenance (YAML / JSON / timm args), and read it back."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from autotransfer.core.errors import UserError

__all__ = ["EXPORT_FORMATS", "export_payload", "write_export", "read_export", "timm_args"]

EXPORT_FORMATS = ("yaml", "json", "timm")
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
            "freeze": trials[n].user_attrs.get("freeze"),
            "reinit": trials[n].user_attrs.get("reinit"),
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
            "freeze": best.user_attrs.get("freeze"),
            "reinit": best.user_attrs.get("reinit"),
            "num_groups": best.user_attrs.get("num_groups"),
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


def timm_args(payload: dict[str, Any]) -> dict[str, Any]:
    """Arguments for timm's ``train.py --config args.yaml`` that mirror the protocol.

    timm has no per-head lr multiplier, freezing or re-initialisation flags: those are kept
    under ``autotransfer_unmapped`` for the reader.
    """
    settings, protocol, derived = payload["settings"], payload["protocol"], payload["derived"]
    model = settings["model"]
    timm_model = {
        "efficientnet_lite0": "tf_efficientnet_lite0",
        "efficientnet_lite1": "tf_efficientnet_lite1",
        "efficientnet_lite2": "tf_efficientnet_lite2",
    }.get(model, model.split(":", 1)[1].split("@", 1)[0] if model.startswith("timm:") else model)
    steps, n_train, batch = settings["steps"], max(1, settings.get("n_train") or 1), settings["batch_size"]
    return {
        "model": timm_model,
        "pretrained": True,
        "num_classes": settings.get("num_classes"),
        "opt": "sgd" if settings["optimizer"] == "sgd" else "adamw",
        "lr": derived["lr"],
        "momentum": protocol["momentum"],
        "weight_decay": protocol["weight_decay"],
        "layer_decay": protocol["layer_decay"] if protocol["layer_decay"] < 1.0 else None,
        "batch_size": batch,
        "img_size": settings["resolution"],
        "epochs": max(1, round(steps * batch / n_train)),
        "sched": "cosine",
        "hflip": 0.5 if settings.get("augment", True) else 0.0,
        "seed": settings["seed"],
        "autotransfer_unmapped": {
            "head_lr_mult": protocol["head_lr_mult"],
            "freeze_groups": derived["freeze"],
            "reinit_groups": derived["reinit"],
            "bn_mode": protocol["bn_mode"],
            "l2sp": protocol["l2sp"],
            "budget_steps": steps,
            **(
                {"ensemble": f"the handed-back model averages {len(payload['members'])} networks (trials "
                 f"{', '.join(str(m['trial']) for m in payload['members'])}); these args train the first alone"}
                if len(payload.get("members") or []) > 1 else {}
            ),
        },
    }


def write_export(payload: dict[str, Any], path: str | Path, fmt: str = "yaml") -> Path:
    """Write ``payload`` as ``yaml``, ``json`` or ``timm`` (an args YAML for timm's train.py)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, but got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    elif fmt == "yaml":
        path.write_text(yaml.safe_dump(_plain(payload), sort_keys=False))
    else:
        path.write_text(yaml.safe_dump(_plain(timm_args(payload)), sort_keys=False))
    return path


def read_export(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON export back (``yaml.safe_load``); a one-line error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {str(path)!r} does not exist: export one with `autotransfer export STUDY -o {path}`")
    try:
        payload = yaml.safe_load(path.read_text())
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
