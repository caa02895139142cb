"""Build the forecast's shipped evidence (issue 30): one row per past study with the features the
forecast reads before any trial, and what the study handed back.

Rows:

- ``judged``: the cells of ``benchmarks/judged.jsonl`` (bench_judged.py: efficientnet_lite0 at
  64 px, 20 trials). Outcome: the judged score (1,000 unseen images) of method ``z`` (the
  current default job) where the cell has it, else ``k`` (tune with schedules, re-picked by the
  settled score: tune as it ran before the time budget). ``outcome_method`` says which.
- ``surface``: the studies of ``benchmarks/surface-imagenet.json`` (48 px, 20 trials, an older
  tune). Outcome: their ``test_score`` on the study's own small test split (``outcome_images``
  images): noisy, and weighed by its binomial noise in the fit.

Features (``autotransfer.forecast.features``): the estimator run as ``tune`` runs it, on the
study's train+val split of the seeded subsample (``prepare_data`` with the cell's n and seed),
plus a 5-fold logistic-regression probe on the estimator's final pooled features.

Resumable: rows already in the asset (same ``cell``) are kept; ``--rebuild`` recomputes all.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/build_forecast_evidence.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
ASSET = HERE.parent / "autotransfer" / "assets" / "forecast-evidence.json"
JUDGED = HERE / "judged.jsonl"
SURFACE = HERE / "surface-imagenet.json"
MODEL = "efficientnet_lite0"


def judged_cells() -> list[dict]:
    """The judged cells with an outcome: z where present, else k; with the naive baselines."""
    rows: dict[str, dict[str, dict]] = defaultdict(dict)
    prior_val: dict[str, float] = {}
    for line in JUDGED.read_text().splitlines():
        row = json.loads(line)
        rows[row["cell"]][row["method"]] = row
        for candidate in (row.get("pick") or {}).get("candidates", []):
            if row["method"] == "h" and candidate.get("source") == "prior":  # only when it made h's top 3
                prior_val[row["cell"]] = candidate["val_score"]
    cells = []
    for cell, methods in sorted(rows.items()):
        if cell == "demo" or not ({"k", "z"} & set(methods)):
            continue
        target, n, seed = cell.split(":")
        method = "z" if "z" in methods else "k"
        cells.append(
            {
                "cell": cell,
                "kind": "judged",
                "target": f"builtin:{target}",
                "n": int(n),
                "seed": int(seed),
                "resolution": 64,
                "trials": 20,
                "outcome": methods[method]["judge"],
                "outcome_method": method,
                "outcome_images": methods[method]["judge_images"],
                "k": methods["k"]["judge"] if "k" in methods else None,
                "z": methods["z"]["judge"] if "z" in methods else None,
                "prior_centre_judge": methods["f"]["judge"] if "f" in methods else None,
                "prior_centre_val": prior_val.get(cell),
            }
        )
    return cells


def surface_cells() -> list[dict]:
    """The surface studies (48 px, an older tune): outcome the study's own test score."""
    from autotransfer.core.settings import StudySettings

    cells = []
    for point in json.loads(SURFACE.read_text())["points"]:
        if point.get("test_score") is None:
            continue
        test_frac = StudySettings(target=point["target"]).test_frac
        cells.append(
            {
                "cell": point["study"],
                "kind": "surface",
                "target": point["target"],
                "n": int(point["n"]),
                "seed": int(point["seed"]),
                "resolution": 48,
                "trials": int(point.get("trials", 20)),
                "outcome": float(point["test_score"]),
                "outcome_method": "test_score",
                "outcome_images": max(int(round(test_frac * point["n"])), 1),
                "val_score": float(point["score"]),
            }
        )
    return cells


def features_of(cell: dict) -> dict:
    """The estimator and the probe on the study's train+val split, as ``tune`` measures it."""
    from autotransfer.core.settings import StudySettings
    from autotransfer.estimate import TaskEstimator
    from autotransfer.forecast.features import probe_accuracy, task_features
    from autotransfer.search.prepared import prepare_data

    settings = StudySettings(target=cell["target"], model=MODEL, n=cell["n"], seed=cell["seed"], device="cpu")
    prepared = prepare_data(settings)
    tick = time.perf_counter()
    estimator = TaskEstimator(device="cpu")
    profile = estimator.fit(prepared.trainval, MODEL)
    estimate_s = time.perf_counter() - tick
    tick = time.perf_counter()
    probe = probe_accuracy(estimator.group_features_[-1], estimator.labels_, profile.size.metric, seed=cell["seed"])
    probe_s = time.perf_counter() - tick
    return {
        "features": task_features(profile, probe, cell["n"]),
        "metric": profile.size.metric,
        "estimate_s": round(estimate_s, 2),
        "probe_s": round(probe_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ASSET))
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    done = {}
    if out.exists() and not args.rebuild:
        done = {row["cell"]: row for row in json.loads(out.read_text())["rows"]}
    from autotransfer.forecast.evidence import EVIDENCE_VERSION

    rows = []
    for cell in judged_cells() + surface_cells():
        if cell["cell"] in done:
            rows.append({**done[cell["cell"]], **cell})
        else:
            row = {**cell, **features_of(cell)}
            rows.append(row)
            f = row["features"]
            print(
                f"{cell['cell']}: probe {f['probe']:.3f} sim {f['similarity']:.3f} outcome {cell['outcome']:.3f}"
                f" ({row['estimate_s']:.0f}+{row['probe_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        asset = {
            "version": EVIDENCE_VERSION,
            "model": MODEL,
            "made_by": "benchmarks/build_forecast_evidence.py",
            "how": (
                "features: TaskEstimator on the study's train+val split of its seeded subsample, and a"
                " 5-fold logistic-regression probe on its final pooled features; outcome: judged score"
                " (1,000 unseen images) of z (the default job) or k (tune as before the time budget) for"
                " kind judged, the study's own test score for kind surface"
            ),
            "rows": rows,
        }
        out.write_text(json.dumps(asset, indent=1, allow_nan=False) + "\n")
    print(f"{len(rows)} rows -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
