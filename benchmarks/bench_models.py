"""Which model (issue 29): does ``tune --model auto`` hand back a model as good as the best
single-model ``tune`` among its candidates, at what compute, and does the estimator rank the
candidates as their fine-tuned accuracy does?

Per cell (``TARGET:N:SEED``; the target's ``builtin:`` name, options allowed, e.g.
``mnist5k?classes=5-9``), each a default job (no ``--trials``, no ``--time-budget``) at 64 px on
the CPU, the folder it wrote judged as a user loads it on up to 1,000 images outside the study's
subsample (``bench_judged.Judge``: the same judge sets):

- ``M``: ``tune --models ZOO``: the offline zoo of ``--model auto`` less any laboratory source
  pretrained on images of the target's pool (``backbones.catalog.trained_images_in``: such a
  source is never judged there); rank, race 2, continue the winner;
- ``z@MODEL``: ``tune --model MODEL``, one per candidate of M's ranking (``--models`` narrows them).

Every row records wall and CPU seconds (this process's) and, for M, its candidates' evidence and
choice. ``--summary`` prints, per cell, M against the best single-model job, M's compute as a
multiple of ``z@efficientnet_lite0``'s, and the rank agreement (Kendall tau, with a bootstrap
interval over cells) of the estimator's ranker and of two naive rankings (parameters, and the
ImageNet top-1 that timm lists for the Lite models) with the judged accuracy of the candidates.

    OMP_NUM_THREADS=1 python benchmarks/bench_models.py --cells animals:200:0 &
    python benchmarks/bench_models.py --summary

Resumable per (cell, method): rows append to ``benchmarks/models.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))

OUT = Path(__file__).parent / "out"
RESULTS = Path(__file__).parent / "models.jsonl"
DEFAULT_CELLS = ["animals:200:0", "elpv:200:0", "mnist5k:200:0"]
RESOLUTION = 64
#: ImageNet top-1 of timm's ``tf_efficientnet_lite0/1/2`` (timm's results tables), the naive
#: "bigger and better on ImageNet" ranking; the laboratory sources have none (ranked last).
IMAGENET_TOP1 = {"efficientnet_lite0": 74.8, "efficientnet_lite1": 76.6, "efficientnet_lite2": 77.5}


def cell_parts(cell: str) -> tuple[str, int, int]:
    target, n, seed = cell.rsplit(":", 2)
    return target, int(n), int(seed)


def run_job(cell: str, method: str, out: Path) -> dict:
    """One default ``tune`` job of ``cell`` (``M``: ``--model auto``; ``z@MODEL``), judged."""
    from anytime import Timer
    from bench_judged import Judge, folder_members

    from autotransfer.pipeline.tune_job import tune_job

    target, n, seed = cell_parts(cell)
    folder = out / "models-runs" / cell.replace(":", "-").replace("?", "_").replace("=", "_") / method
    options = dict(n=n, seed=seed, resolution=RESOLUTION, prior="quadrant", device="cpu")
    if method == "M":  # the zoo, less any lab source pretrained on this target's images (never judged on them)
        options["models"] = ",".join(fair_zoo(target))
    else:
        options["model"] = method.split("@", 1)[1]
    with Timer() as t:
        result = tune_job(f"builtin:{target}", out=folder, progress=True, **options)
    judge = Judge(result.settings)
    row = {
        "judge": judge(folder_members(result.model_path), result.settings.metric),
        "judge_images": len(judge.dataset),
        "model": result.settings.model,
        "wall_s": round(t.wall, 1),
        "cpu_s": round(t.cpu, 1),
        "test": result.test_score,
        "search_trials": result.n_search_trials,
        "ledger": result.ledger,
    }
    if result.model_choice is not None:
        row["model_choice"] = result.model_choice
    return row


def fair_zoo(target: str) -> list[str]:
    """``--model auto``'s candidates less the lab sources trained on images of ``target``'s pool."""
    from autotransfer.backbones.catalog import offline_zoo, trained_images_in

    return [spec for spec in offline_zoo() if trained_images_in(spec, f"builtin:{target}") == 0]


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b of two score lists (scipy); NaN with fewer than 2 items or no spread."""
    from scipy import stats

    if len(x) < 2:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def summary(rows: list[dict]) -> str:
    import numpy as np

    by = {(r["cell"], r["method"]): r for r in rows}
    cells = sorted({r["cell"] for r in rows if r["method"] == "M"})
    lines = [
        "| cell | M: --model auto (chosen) | best single (model) | M − best | M CPU / z@lite0 CPU |",
        "|---|---|---|---|---|",
    ]
    diffs, ratios, taus = [], [], {"estimator": [], "parameters": [], "ImageNet top-1": []}
    for cell in cells:
        m = by[(cell, "M")]
        singles = {r["method"].split("@", 1)[1]: r for (c, k), r in by.items() if c == cell and k.startswith("z@")}
        if not singles:
            continue
        best_model, best = max(singles.items(), key=lambda kv: kv[1]["judge"])
        d = 100 * (m["judge"] - best["judge"])
        diffs.append(d)
        ref = singles.get("efficientnet_lite0")
        ratio = m["cpu_s"] / ref["cpu_s"] if ref else math.nan
        ratios.append(ratio)
        lines.append(
            f"| {cell} | {100 * m['judge']:.1f} ({m['model']}) | {100 * best['judge']:.1f} ({best_model}) |"
            f" {d:+.1f} | {ratio:.2f} |"
        )
        evidence = {c["model"]: c.get("evidence") or {} for c in (m.get("model_choice") or {}).get("candidates", [])}
        models = [k for k in singles if k in evidence]
        judged = [singles[k]["judge"] for k in models]
        taus["estimator"].append(kendall_tau([evidence[k].get("nleep") or -math.inf for k in models], judged))
        taus["parameters"].append(kendall_tau([evidence[k].get("params") or 0 for k in models], judged))
        taus["ImageNet top-1"].append(kendall_tau([IMAGENET_TOP1.get(k, 0.0) for k in models], judged))
    if diffs:
        lines.append(
            f"\nmean M − best single {np.mean(diffs):+.1f} points over {len(diffs)} cells (worst {min(diffs):+.1f});"
            f" M's compute {np.nanmean(ratios):.2f}x the lite0 default job"
        )
    rng = np.random.default_rng(0)
    for name, values in taus.items():
        vals = np.array([v for v in values if math.isfinite(v)])
        if not len(vals):
            continue
        boot = [np.mean(rng.choice(vals, len(vals))) for _ in range(2000)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        lines.append(
            f"Kendall tau, {name} vs judged: {vals.mean():+.2f} (95% bootstrap over cells {lo:+.2f} to {hi:+.2f})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--models", default=None, help="the single-model jobs to run (default: M's candidates)")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    path = Path(args.results)
    if args.summary:
        print(summary(load_rows(path)))
        return
    OUT.mkdir(exist_ok=True)
    for cell in args.cells.split(","):
        done = {(r["cell"], r["method"]) for r in load_rows(path)}
        methods = ["M"]
        if (cell, "M") in done:
            m = next(r for r in load_rows(path) if (r["cell"], r["method"]) == (cell, "M"))
            candidates = [c["model"] for c in m["model_choice"]["candidates"]]
        else:
            candidates = fair_zoo(cell_parts(cell)[0])
        wanted = args.models.split(",") if args.models else candidates
        methods += [f"z@{model}" for model in wanted]
        for method in methods:
            if (cell, method) in done:
                continue
            row = {"cell": cell, "method": method, **run_job(cell, method, OUT)}
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{cell} {method}: {row['judge']:.4f} ({row['model']}, {row['cpu_s']:.0f} CPU s)", file=sys.stderr)


if __name__ == "__main__":
    main()
