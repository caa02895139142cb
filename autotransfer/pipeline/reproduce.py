"""``autotransfer train --config``: reproduce the final model from an exported protocol."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import Protocol
from autotransfer.core.settings import StudySettings

__all__ = ["train_from_config", "quality_warnings"]


def _read_members(payload: dict[str, Any], protocol: Protocol) -> list[tuple[Protocol, str, dict[str, Any]]]:
    """``(protocol, split, member)`` for each model of the export's handed-back model: its
    ``members`` (an ensemble, or the one trial with the split its final model trained on), or the
    export's ``protocol`` on train+val for an export that lists none."""
    listed = payload.get("members")
    if not listed:
        return [(protocol, "trainval", {})]
    if not isinstance(listed, list) or not all(
        isinstance(m, dict) and isinstance(m.get("protocol"), dict) for m in listed
    ):
        raise UserError(
            "the config's 'members' must list mappings with a 'protocol' each; use the YAML `autotransfer export` writes"
        )
    out = []
    for i, member in enumerate(listed):
        try:
            member_protocol = Protocol.from_dict(member["protocol"])
        except (TypeError, ValueError, KeyError) as err:
            raise UserError(f"the config's member {i + 1} has no valid protocol ({err})") from None
        split = "train" if member.get("trained_on") == "train" else "trainval"
        out.append((member_protocol, split, member))
    return out


def _read_payload(payload: Any) -> tuple[StudySettings, Protocol]:
    """The export's settings and protocol; anything missing or out of range is a ``UserError``."""
    hint = "use the YAML or JSON written by `autotransfer export`"
    if not isinstance(payload, dict):
        raise UserError(f"the config must be a mapping, but got {type(payload).__name__}; {hint}")
    for key in ("settings", "protocol"):
        if not isinstance(payload.get(key), dict):
            raise UserError(
                f"the config has no {key!r} mapping (its keys: {', '.join(map(str, payload)) or 'none'}); {hint}"
            )
    try:
        settings = StudySettings.from_dict(payload["settings"])
    except UserError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"the config's settings are not valid ({err}); {hint}") from None
    try:
        protocol = Protocol.from_dict(payload["protocol"])
        lr = protocol.lr  # 10 ** log10_elr: overflows past about 308
    except UserError:
        raise
    except OverflowError:
        raise UserError(
            f"the config's protocol has log10_elr = {payload['protocol'].get('log10_elr')!r}, an effective"
            " learning rate too large to represent; searched values lie between about -5 and 1"
        ) from None
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"the config's protocol is not valid ({err}); {hint}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise UserError(
            f"the config's protocol has log10_elr = {protocol.log10_elr!r}, which gives the learning rate"
            f" {lr!r}; searched values lie between about -5 and 1"
        )
    return settings, protocol


def chance_level(labels: np.ndarray, num_classes: int, metric: str) -> float:
    """The score of a model that always predicts the most common class: ``1 / C`` for balanced
    accuracy, the largest class's share of ``labels`` for accuracy."""
    if metric == "balanced_accuracy" or len(labels) == 0:
        return 1.0 / max(num_classes, 1)
    return float(np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).max() / len(labels))


def quality_warnings(
    test_score: float, test_images: int, chance: float, probe: float | None = None
) -> tuple[bool, bool | None, list[str]]:
    """``(at_chance, below_probe, warnings)`` for a final model's test score.

    ``at_chance``: the score's 95% interval (Wilson, ``test_images`` images) reaches down to
    ``chance``, so the model cannot be told from one that guesses the largest class.
    ``below_probe`` (``None`` when the linear-probe control's score ``probe`` is unknown): the
    whole interval lies below ``probe``.
    """
    from autotransfer.train.metrics import score_interval

    low, high = score_interval(min(max(test_score, 0.0), 1.0), max(int(test_images), 1))
    warnings: list[str] = []
    at_chance = low <= chance
    if at_chance:
        warnings.append(
            f"the model is at chance level: its test score {test_score:.3f} (95% interval {low:.2f}-{high:.2f},"
            f" {test_images} images) does not rise above {chance:.3f}, the score of always predicting the"
            " largest class; it learned nothing useful: check the protocol (learning rate) and the data"
        )
    below_probe = None if probe is None else bool(high < probe)
    if below_probe:
        warnings.append(
            f"the model scores below the study's linear-probe control: test score {test_score:.3f}"
            f" (95% interval {low:.2f}-{high:.2f}) against {probe:.3f} for the probe (on validation):"
            " a plain linear head on the frozen model does better"
        )
    return at_chance, below_probe, warnings


def train_from_config(
    payload: dict[str, Any],
    out_dir: str | Path,
    *,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train the exported model on train+val, score it on the test split, write the model.

    An ensemble export (``members``) trains every member and scores their mean softmax; a member
    whose final model fell back to the trial's own run (``trained_on: train``) trains on the
    train split, as ``tune`` handed it back.

    Writes the model folder (``config.json`` + ``model.safetensors`` + ``README.md``, timm's
    pretrained format: ``handback.model_card``) and ``metrics.json`` into ``out_dir`` and returns
    the metrics.
    The data is re-loaded from its spec and must have the recorded fingerprint. A model at
    chance level, or clearly below the study's linear-probe control (when the export records
    it), is flagged in ``metrics["warnings"]`` (``at_chance``, ``below_probe``). A payload
    without settings or protocol, a learning rate out of range and a diverging run are each a
    one-line ``UserError``.
    """
    from autotransfer.backbones.model_dir import portable_model_spec
    from autotransfer.handback.final import ensemble_test_score, retrain_and_test
    from autotransfer.handback.model_card import save_tuned_ensemble
    from autotransfer.search.prepared import prepare_data
    from autotransfer.train import DivergedError

    settings, protocol = _read_payload(payload)
    if device:
        settings.device = device
    prepared = prepare_data(settings)
    if settings.fingerprint and prepared.fingerprint != settings.fingerprint:
        raise UserError(
            f"dataset {settings.target!r} no longer matches the exported fingerprint"
            f" ({prepared.fingerprint[:12]} != {settings.fingerprint[:12]}): the data changed since export"
        )
    members = _read_members(payload, protocol)
    started = time.perf_counter()
    trained = []
    for member_protocol, split, _ in members:
        try:
            trained.append(retrain_and_test(member_protocol, settings, prepared, progress=progress, split=split))
        except DivergedError as err:
            raise UserError(
                f"training diverged at step {err.step} (loss {err.loss}): the config's learning rate is too high"
                f" (log10_elr = {member_protocol.log10_elr:g}, lr = {member_protocol.lr:.3g}); lower log10_elr in the config"
            ) from None
    backbone, _, result = trained[0]
    test_score = (
        trained[0][1] if len(trained) == 1 else ensemble_test_score([t[0] for t in trained], settings, prepared)
    )
    test_labels = np.asarray(prepared.test.labels)
    chance = chance_level(test_labels, len(prepared.dataset.classes), settings.metric)
    probe = (payload.get("controls") or {}).get("probe")
    probe = float(probe) if isinstance(probe, (int, float)) else None
    at_chance, below_probe, warnings = quality_warnings(test_score, len(test_labels), chance, probe)
    self_trained = [i + 1 for i, (_, _, m) in enumerate(members) if "pseudo" in str(m.get("trained_on", ""))]
    if self_trained:
        warnings.append(
            f"self-training is not reproduced: tune trained member(s) {', '.join(map(str, self_trained))} on train+val"
            " plus pseudo-labelled unlabelled images (--unlabelled); this model trained them on train+val only"
        )
    metrics = {
        "study": payload.get("study"),
        "metric": settings.metric,
        "test_score": test_score,
        "test_images": int(len(test_labels)),
        "exported_test_score": (payload.get("scores") or {}).get("test"),
        "chance_level": chance,
        "at_chance": at_chance,
        "probe_control": probe,
        "below_probe": below_probe,
        "warnings": warnings,
        "protocol": protocol.to_dict(),
        "members": len(trained),
        "member_test_scores": [t for _, t, _ in trained],
        "freeze_reinit": list(protocol.integers(backbone.num_groups)),
        "steps": settings.steps,
        "train_images_per_s": float(result.images_per_s),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "dataset_fingerprint": prepared.fingerprint,
        "model": portable_model_spec(settings.model),  # no path of this machine in the model folder
    }
    # the model folder and metrics.json are written together, renamed into place once complete
    controls = {k: v for k, v in (payload.get("controls") or {}).items() if isinstance(v, (int, float)) or v is None}
    val = (payload.get("scores") or {}).get("val")
    save_tuned_ensemble(
        [
            (
                b,
                p,
                {
                    "trial": m.get("trial", payload.get("trial", 0)),
                    "val_score": m.get("val", val) if isinstance(m.get("val", val), (int, float)) else None,
                    "test_score": t,
                    "trained_on": "train" if split == "train" else "train+val",
                },
            )
            for (b, t, _), (p, split, m) in zip(trained, members)
        ],
        Path(out_dir),
        settings,
        classes=list(prepared.dataset.classes),
        test_score=test_score,
        test_images=len(test_labels),
        controls=controls,
        study=payload.get("study"),
        files={"metrics.json": json.dumps(metrics, indent=2) + "\n"},
    )
    return metrics
