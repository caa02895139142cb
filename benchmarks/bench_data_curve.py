"""Calibration of the data-requirement curve (issue 30): from an N = 200 study, forecast the judged
accuracy of ``tune``'s hand-back at N = 1000 on the same target, and compare with the measured one.

For each target (elpv, animals, mnist5k; seed 0), the cell's settings are ``bench_judged``'s
(``settings_for``: efficientnet_lite0 at 64 px, the N = 200 subsample), searching every schedule as
method ``k``'s study did. The judged.jsonl ``k`` rows hold only trial numbers, not protocols, so
the picked protocol comes from a short ``tune --time-budget BUDGET --data-curve`` on the same
subsample; its curve stage trains that protocol on 25/50/100% of the train split and scores each
on the study's validation + test images. Forecasts at N = 1000 from the recorded points:

- corrected: the piecewise power law with the past tasks' exponent, *leave one target out*
  (``load_prior(exclude=[target])``: the shipped correction stands on judged.jsonl's N = 200 and
  N = 1000 rows of these very targets, so the target's own rows are left out);
- plain: the same power law with the curve's own exponent throughout (no correction);
- flat: the curve's score at N = 200 (no gain from more data).

Outcome: ``judged.jsonl`` method ``k`` at ``TARGET:1000:0`` (1,000 unseen images). Also recorded:
the short tune's hand-back judged on ``bench_judged.Judge``'s N = 200 judge set, against ``k`` at
``TARGET:200:0``, which says how representative the short study is.

Resumable: one JSONL row per target (``benchmarks/data_curve.jsonl``); a tune cut short resumes
from its storage, and a study with a recorded curve does not measure it again.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_data_curve.py [--targets elpv,animals] [--budget 150]
    python benchmarks/bench_data_curve.py --summary      # the table for RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_judged import OUT, RESULTS, Judge, folder_members, settings_for  # noqa: E402

LOG = HERE / "data_curve.jsonl"
TARGETS = ("elpv", "animals", "mnist5k")
SMALL, LARGE = 200, 1000
HIT = 0.02


def judged_k(cell: str) -> float | None:
    """Method k's judged score of ``cell`` in judged.jsonl."""
    for line in RESULTS.read_text().splitlines():
        row = json.loads(line)
        if row.get("method") == "k" and row.get("cell") == cell:
            return float(row["judge"])
    return None


def run_target(target: str, budget: float) -> dict:
    from autotransfer.pipeline.tune import tune

    settings = replace(settings_for(target, SMALL, 0), schedules=("one-stage", "lp-ft", "gradual"), trials=100)
    OUT.mkdir(exist_ok=True)
    url = f"sqlite:///{OUT / f'datacurve-{target}-{SMALL}-0.db'}"
    runs = OUT / "datacurve-runs" / target
    t0 = time.perf_counter()
    result = tune(
        settings, study_name="dc", storage=url, runs_dir=runs, export_dir=runs, time_budget=budget, data_curve=True
    )
    wall = time.perf_counter() - t0
    if result.data_curve is None or result.model_path is None:
        raise SystemExit(f"{target}: no curve or no model: {result.notes}")
    judge = Judge(result.settings)
    h200 = judge(folder_members(result.model_path), result.settings.metric)
    return {
        "target": target,
        "cell": f"{target}:{SMALL}:0",
        "budget_s": budget,
        "wall_s": round(wall, 1),
        "ledger": result.ledger,
        "search_trials": result.n_search_trials,
        "h200_judged": h200,
        "k200_judged": judged_k(f"{target}:{SMALL}:0"),
        "curve": result.data_curve,
    }


def forecasts(row: dict) -> dict:
    """The three forecasts at N = 1000 from the row's recorded points, with 80% intervals."""
    from autotransfer.handback.data_curve import CurvePoint, fit_data_curve, load_prior

    rec = row["curve"]
    points = [CurvePoint(int(p["images"]), float(p["score"]), int(p["scored_on"])) for p in rec["points"]]
    common = dict(share=float(rec["share"]), labelled=int(rec["labelled"]), metric=rec["metric"])
    out = {}
    for name, prior in (("corrected", load_prior(exclude=[f"builtin:{row['target']}"])), ("plain", None)):
        curve = fit_data_curve(points, prior=prior, **common)
        c, lo, hi = (float(v[0]) for v in curve.score_at([LARGE]))
        out[name] = {"centre": c, "low": lo, "high": hi, "exponent": curve.exponent}
    now = fit_data_curve(points, prior=None, **common).score_at([SMALL])
    out["flat"] = {"centre": float(now[0][0]), "low": float(now[1][0]), "high": float(now[2][0])}
    return out


def summary() -> None:
    rows = [json.loads(line) for line in LOG.read_text().splitlines()] if LOG.exists() else []
    print(
        "| target | points (images: val+test score) | short tune judged / k judged at 200 | k judged at 1000 |"
        " corrected forecast (80%) | plain power law (80%) | flat |"
    )
    print("|---|---|---|---|---|---|---|")
    tally = {"corrected": [0, 0, []], "plain": [0, 0, []], "flat": [0, 0, []]}
    for row in rows:
        truth = judged_k(f"{row['target']}:{LARGE}:0")
        f = forecasts(row)
        pts = ", ".join(f"{p['images']}: {p['score']:.3f}" for p in row["curve"]["points"])
        cells = []
        for name in ("corrected", "plain", "flat"):
            v = f[name]
            hit = truth is not None and abs(v["centre"] - truth) <= HIT
            cover = truth is not None and v["low"] <= truth <= v["high"]
            tally[name][0] += hit
            tally[name][1] += cover
            tally[name][2].append(abs(v["centre"] - (truth or math.nan)))
            mark = ("hit" if hit else "miss") + (", covers" if cover else ", does not cover")
            cells.append(f"{v['centre']:.3f} ({v['low']:.3f}-{v['high']:.3f}; {mark})")
        print(
            f"| {row['target']} | {pts} (on {row['curve']['points'][0]['scored_on']}) | {row['h200_judged']:.3f} /"
            f" {row['k200_judged']:.3f} | {truth:.3f} | " + " | ".join(cells) + " |"
        )
    for name, (hits, covers, errs) in tally.items():
        mae = 100 * sum(errs) / len(errs) if errs else math.nan
        print(
            f"- {name}: within {100 * HIT:.0f} points on {hits} of {len(rows)}, interval covers {covers} of {len(rows)},"
            f" mean absolute error {mae:.1f} points"
        )
    for row in rows:
        led = row["ledger"]
        curve_s = led["stages"].get("data curve")
        print(
            f"- {row['target']}: tune {row['wall_s']:.0f} s, {row['search_trials']} search trials; the data curve"
            f" {curve_s} s ({led['in_trainings'].get('data curve') if led.get('in_trainings') else '?'} full trainings)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--budget", type=float, default=150.0, help="the short tune's --time-budget in seconds")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if args.summary:
        summary()
        return
    done = {json.loads(line)["target"] for line in LOG.read_text().splitlines()} if LOG.exists() else set()
    for target in args.targets.split(","):
        if target in done:
            print(f"{target}: done", file=sys.stderr)
            continue
        row = run_target(target, args.budget)
        with LOG.open("a") as log:
            log.write(json.dumps(row) + "\n")
        print(f"{target}: {row['curve']['line']} ({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    summary()


if __name__ == "__main__":
    main()
