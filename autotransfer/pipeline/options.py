"""What the command line's options resolve to, so that ``cli.py`` only parses and prints: the
settings of a ``tune`` run (the embedded demo or a target, the user's overrides, the default
surface prior) and the folder, storage and surface it writes to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotransfer.core.errors import UserError
from autotransfer.core.settings import StudySettings

__all__ = [
    "TuneOutputs",
    "tune_outputs",
    "tune_settings",
    "absolute_spec",
    "surface_with_points",
    "on_surface",
    "SURFACE_ENV",
    "GPU_BATCH_SIZE",
    "GPU_RESOLUTION",
]

#: A surface shared across output folders (wins over ``--out``'s ``surface.json``).
SURFACE_ENV = "AUTOTRANSFER_SURFACE"
#: A study on a GPU trains at the models' native size with 4x the CPU batch, unless told otherwise
#: (docs/devices.md, "GPU defaults"). The CPU defaults (64 px, batch 32) leave a large GPU
#: launch-bound: a few milliseconds of work per step against ~1,000 kernel launches.
GPU_BATCH_SIZE = 128
GPU_RESOLUTION = 224


@dataclass(frozen=True)
class TuneOutputs:
    """Where a ``tune`` run writes: ``folder`` (``--out``, absolute), the Optuna ``storage`` URL,
    the model folders (``runs_dir``), the exports (``export_dir``) and the ``surface`` store."""

    folder: Path
    storage: str
    runs_dir: Path
    export_dir: Path
    surface: Path


def tune_outputs(out: str | Path, storage: str | None = None) -> TuneOutputs:
    """Resolve ``--out`` and ``--storage``: the storage defaults to ``$AUTOTRANSFER_STORAGE``, else
    ``OUT/autotransfer.db``; the surface to ``$AUTOTRANSFER_SURFACE``, else ``OUT/surface.json``.
    An ``out`` that is a file is a one-line ``UserError``."""
    from autotransfer.search.storage import default_storage

    folder = Path(out).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder: give the folder tune should write into")
    shared = os.environ.get(SURFACE_ENV, "").strip()
    surface = Path(shared).expanduser().resolve() if shared else folder / "surface.json"
    return TuneOutputs(folder, storage or default_storage(folder), folder / "runs", folder / "exports", surface)


def tune_settings(
    target: str | None, overrides: dict[str, Any], *, prune: bool = True, surface: Path | None = None
) -> StudySettings:
    """The settings of a ``tune`` run: the embedded demo's (no ``target``) or the defaults for
    ``target``, with the ``overrides`` that are not ``None`` (``StudySettings`` field names) and
    ``prune``. A target studied on a GPU gets ``GPU_BATCH_SIZE`` and ``GPU_RESOLUTION`` unless the
    overrides set them (the embedded demo keeps its own). Without an explicit ``prior``, a ``surface`` that holds points for the model becomes
    the prior (``surface:PATH``); an explicit ``surface:PATH`` is checked to hold points now."""
    from autotransfer.search.demo import DEFAULT_SETTINGS
    from autotransfer.surface import store_named_by

    base = DEFAULT_SETTINGS if target is None else StudySettings(target=target)
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("unlabelled"):
        given["unlabelled"] = absolute_spec(str(given["unlabelled"]))
    if target is not None and _on_gpu(given.get("device", base.device)):
        given = {"batch_size": GPU_BATCH_SIZE, "resolution": GPU_RESOLUTION, **given}
    settings = StudySettings.from_dict({**base.to_dict(), **given, "prune": prune})
    prior = given.get("prior")
    if prior is None:
        path = surface_with_points(surface, settings.model) if surface is not None else None
    else:
        path = store_named_by(prior, settings.model)
    if prior is None and path is not None:
        settings = StudySettings.from_dict({**settings.to_dict(), "prior": f"surface:{path}"})
    return settings


def absolute_spec(spec: str) -> str:
    """A dataset spec naming an existing path, with the path made absolute (``folder:`` and any
    ``?options`` kept), so that a study records where its ``--unlabelled`` images are wherever it
    is resumed from; anything else as given."""
    if spec.startswith("builtin:"):
        return spec
    prefix = "folder:" if spec.startswith("folder:") else ""
    raw, sep, options = spec[len(prefix) :].partition("?")
    path = Path(raw).expanduser()
    if not raw or not path.exists():
        return spec
    return f"{prefix}{path.resolve()}{sep}{options}"


def surface_with_points(store: Path, model: str) -> Path | None:
    """``store`` when it holds points for ``model`` (then it is the default prior), else ``None``."""
    from autotransfer.surface import SurfaceStore

    surface = SurfaceStore(store)
    return store if surface.exists() and surface.load(model=model) else None


def on_surface(store: Path, study: str) -> bool:
    """Whether ``study``'s optimum is recorded on the surface at ``store``."""
    from autotransfer.surface import SurfaceStore

    surface = SurfaceStore(store)
    return surface.exists() and any(p.study == study for p in surface.load())


def _on_gpu(device: str) -> bool:
    """Whether the study's trials will run on CUDA (``auto`` with a GPU present, or ``cuda``)."""
    from autotransfer.train.config import resolve_device

    return resolve_device(device).type == "cuda"
