"""The forecast's evidence: past studies' features and outcomes, shipped as a package asset."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotransfer.core.errors import UserError

__all__ = ["EVIDENCE_VERSION", "FEATURES", "Evidence", "EvidenceError", "EvidenceRow", "load_evidence"]

#: The asset's format version (``benchmarks/build_forecast_evidence.py`` writes it).
EVIDENCE_VERSION = 1
#: The shipped asset.
ASSET = Path(__file__).resolve().parent.parent / "assets" / "forecast-evidence.json"
#: The features every row must carry (``forecast.features.task_features``).
FEATURES = (
    "log10_n",
    "classes",
    "chance",
    "similarity",
    "transferability",
    "logme_over_chance",
    "excess_mean",
    "excess_tail",
    "probe",
)
KINDS = ("judged", "surface")


class EvidenceError(UserError):
    """The forecast's evidence file is missing, malformed or of another version."""


@dataclass(frozen=True)
class EvidenceRow:
    """One past study: its ``features``, its ``outcome`` (a score in [0, 1]) measured on
    ``outcome_images`` images, the job's ``model``, ``resolution`` and ``trials``."""

    cell: str
    kind: str
    target: str
    n: int
    model: str
    resolution: int
    trials: int
    features: dict[str, float]
    outcome: float
    outcome_method: str
    outcome_images: int
    extra: dict[str, Any]

    @property
    def outcome_variance(self) -> float:
        """The outcome's binomial sampling variance, p(1-p)/images."""
        p = min(max(self.outcome, 0.01), 0.99)
        return p * (1 - p) / max(self.outcome_images, 1)


@dataclass(frozen=True)
class Evidence:
    """The loaded evidence: its ``rows``, the ``path`` it came from and how it was made."""

    rows: tuple[EvidenceRow, ...]
    path: str
    how: str

    def of_kind(self, kind: str) -> tuple[EvidenceRow, ...]:
        return tuple(r for r in self.rows if r.kind == kind)


def _row(raw: Any, model: str, where: str) -> EvidenceRow:
    if not isinstance(raw, dict):
        raise EvidenceError(f"{where}: a row must be an object, but got {type(raw).__name__}")
    missing = [k for k in ("cell", "kind", "target", "n", "resolution", "features", "outcome") if k not in raw]
    if missing:
        raise EvidenceError(f"{where}: row {raw.get('cell', '?')!r} lacks {missing}; rebuild it")
    feats = raw["features"]
    if not isinstance(feats, dict) or any(k not in feats for k in FEATURES):
        raise EvidenceError(f"{where}: row {raw['cell']!r} must have the features {list(FEATURES)}")
    values = {k: float(feats[k]) for k in FEATURES}
    outcome = float(raw["outcome"])
    if not all(math.isfinite(v) for v in values.values()) or not 0.0 <= outcome <= 1.0:
        raise EvidenceError(f"{where}: row {raw['cell']!r} has a non-finite feature or an outcome outside [0, 1]")
    if raw["kind"] not in KINDS:
        raise EvidenceError(f"{where}: row {raw['cell']!r} has kind {raw['kind']!r}; expected one of {KINDS}")
    known = {"cell", "kind", "target", "n", "resolution", "features", "outcome", "model", "trials"}
    known |= {"outcome_method", "outcome_images"}
    return EvidenceRow(
        cell=str(raw["cell"]),
        kind=str(raw["kind"]),
        target=str(raw["target"]),
        n=int(raw["n"]),
        model=str(raw.get("model", model)),
        resolution=int(raw["resolution"]),
        trials=int(raw.get("trials", 20)),
        features=values,
        outcome=outcome,
        outcome_method=str(raw.get("outcome_method", "")),
        outcome_images=int(raw.get("outcome_images", 1000)),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def load_evidence(path: str | Path | None = None) -> Evidence:
    """The forecast's evidence at ``path`` (default: the shipped asset). A missing or malformed
    file, or one of another version, is an ``EvidenceError`` naming it."""
    where = Path(path) if path is not None else ASSET
    try:
        data = json.loads(where.read_text())
    except FileNotFoundError:
        raise EvidenceError(f"forecast evidence {str(where)!r} does not exist") from None
    except (OSError, ValueError) as err:
        raise EvidenceError(f"forecast evidence {str(where)!r} is not readable JSON ({err})") from None
    if not isinstance(data, dict) or data.get("version") != EVIDENCE_VERSION:
        got = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise EvidenceError(
            f"forecast evidence {str(where)!r} has version {got!r}; this autotransfer reads version"
            f" {EVIDENCE_VERSION} (rebuild it with benchmarks/build_forecast_evidence.py)"
        )
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise EvidenceError(f"forecast evidence {str(where)!r} has no rows")
    model = str(data.get("model", ""))
    return Evidence(rows=tuple(_row(r, model, str(where)) for r in rows), path=str(where), how=str(data.get("how", "")))
