"""Fill ``num_classes`` and ``transferability`` into a sweep's surface points from its studies (read only).

Points recorded before ``SurfacePoint`` had these fields load with ``num_classes = 0`` (unknown),
so the surface falls back to its plain GP. This reads each point's study from the sweep's Optuna
storage, opened read-only (nothing is written there), takes ``num_classes`` from the study's
settings (or its task profile) and ``transferability`` from the profile's
``transferability_score``, and rewrites the store atomically with ``SurfaceStore.add``.

    python benchmarks/backfill_surface_fields.py studies/sweep-lab.yaml studies/sweep-imagenet.yaml
    python benchmarks/backfill_surface_fields.py studies/sweep-lab.yaml --dry-run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def read_only_url(url: str) -> str:
    """An SQLite URL opened read-only (``mode=ro``); other URLs are returned unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "file:"):
        return url
    path = Path(url[len(prefix) :]).resolve()
    if not path.is_file():
        from autotransfer.core.errors import UserError

        raise UserError(f"storage {str(path)!r} does not exist: run the sweep first, or fix the spec's storage")
    return f"{prefix}file:{path}?mode=ro&uri=true"


def backfill(spec_path: str | Path, *, dry_run: bool = False) -> dict[str, Any]:
    """Fill the points of the sweep at ``spec_path``; returns the counts (``points``, ``filled``
    = changed points, ``unchanged``, ``missing`` = studies not in the storage) and paths."""
    import optuna

    from autotransfer.pipeline.sweep import load_sweep_spec
    from autotransfer.search.storage import storage_location
    from autotransfer.search.study import study_exists
    from autotransfer.surface.store import DEFAULT_STORE, SurfaceStore, fields_from_study

    spec = load_sweep_spec(spec_path)
    store = SurfaceStore(spec.store or DEFAULT_STORE)
    url = read_only_url(storage_location(spec.storage))
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=False) if url.startswith("sqlite") else url
    points = store.load()
    updated, filled, missing = [], 0, []
    for point in points:
        if not study_exists(storage, point.study):
            missing.append(point.study)
            updated.append(point)
            continue
        study = optuna.load_study(study_name=point.study, storage=storage)
        num_classes, transferability = fields_from_study(study)
        new = dataclasses.replace(point, num_classes=num_classes, transferability=transferability)
        filled += new != point
        updated.append(new)
    if filled and not dry_run:
        store.add(updated)  # same names: replaced in place, one atomic write
    return {
        "spec": str(spec_path),
        "store": str(store.path),
        "storage": url,
        "points": len(points),
        "filled": filled,
        "unchanged": len(points) - filled - len(missing),
        "missing": missing,
        "with_transferability": sum(p.transferability is not None for p in updated),
        "written": bool(filled and not dry_run),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="sweep spec YAML files (studies/sweep-*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="count, but do not rewrite the stores")
    args = parser.parse_args()
    specs = [Path(s).resolve() for s in args.specs]
    os.chdir(ROOT)  # the specs' storage and store paths are relative to the repository
    for spec in specs:
        print(json.dumps(backfill(spec, dry_run=args.dry_run)), flush=True)


if __name__ == "__main__":
    main()
