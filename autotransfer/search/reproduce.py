"""``autotransfer train --config``: reproduce the final model from an exported protocol."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from autotransfer.errors import UserError
from autotransfer.search.protocol import Protocol
from autotransfer.search.settings import StudySettings

__all__ = ["train_from_config"]


def train_from_config(
    payload: dict[str, Any],
    out_dir: str | Path,
    *,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train the exported protocol on train+val, score it on the test split, write the model.

    Writes ``model.safetensors`` and ``metrics.json`` into ``out_dir`` and returns the metrics.
    The data is re-loaded from its spec and must have the recorded fingerprint.
    """
    from autotransfer.search.job import _save_model, prepare_data, retrain_and_test

    settings = StudySettings.from_dict(payload["settings"])
    if device:
        settings.device = device
    protocol = Protocol.from_dict(payload["protocol"])
    prepared = prepare_data(settings)
    if settings.fingerprint and prepared.fingerprint != settings.fingerprint:
        raise UserError(
            f"dataset {settings.target!r} no longer matches the exported fingerprint"
            f" ({prepared.fingerprint[:12]} != {settings.fingerprint[:12]}): the data changed since export"
        )
    started = time.perf_counter()
    backbone, test_score, result = retrain_and_test(protocol, settings, prepared, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_model(backbone, out / "model.safetensors", settings, protocol, test_score)
    metrics = {
        "study": payload.get("study"),
        "metric": settings.metric,
        "test_score": test_score,
        "exported_test_score": (payload.get("scores") or {}).get("test"),
        "protocol": protocol.to_dict(),
        "freeze_reinit": list(protocol.integers(backbone.num_groups)),
        "steps": settings.steps,
        "train_images_per_s": float(result.images_per_s),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "dataset_fingerprint": prepared.fingerprint,
        "model": settings.model,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
