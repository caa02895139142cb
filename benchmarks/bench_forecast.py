"""Calibration of the forecast before any trial (issue 30, part 3): leave one target out.

For each target of the shipped evidence (``autotransfer/assets/forecast-evidence.json``, built by
``benchmarks/build_forecast_evidence.py``), the forecast's model is fitted on the other targets'
rows only and forecasts this target's rows. Scored on the judged cells (outcome: the judged score
on 1,000 unseen images of what tune handed back: z where the cell has it, else k): per cell the
forecast, its 80% interval, the outcome and the error; the MAE and the 80% coverage; the error
against z on the cells that have z; and the reliability numbers (nominal vs empirical coverage at
50, 80 and 90%). The surface rows (their own small test splits) are forecast too and reported
apart, with their binomial noise.

Baselines on the same judged cells: the prior centre's validation score (the h study's prior
candidate, ``source: "prior"``: what a user would read after one trial), the prior centre's own
judged score (method f: that one trial, judged), and the probe alone (no gain).

    PYTHONPATH=. python benchmarks/bench_forecast.py                 # the shipped model
    PYTHONPATH=. python benchmarks/bench_forecast.py --variants      # other feature sets too
    PYTHONPATH=. python benchmarks/bench_forecast.py --json benchmarks/forecast-reliability.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

from autotransfer.forecast.evidence import load_evidence
from autotransfer.forecast.model import DEFAULT_BASE, DEFAULT_FEATURES, DEFAULT_HEADROOM, fit_gain_model

LEVELS = (0.5, 0.8, 0.9)
BOTH = ("judged", "surface")
SHIPPED = dict(features=DEFAULT_FEATURES, base=DEFAULT_BASE, kinds=BOTH, headroom=DEFAULT_HEADROOM)
VARIANTS = {"shipped": SHIPPED, "shipped, judged rows only": {**SHIPPED, "kinds": ("judged",)}}
for _base in ("probe",):
    for _features in (
        (),
        ("log10_n",),
        ("similarity",),
        ("similarity", "log10_n"),
        ("chance",),
        ("excess_mean",),
        ("transferability",),
    ):
        _name = f"{_base} + gain({', '.join(_features) or 'constant'})"
        VARIANTS[_name] = dict(features=_features, base=_base, kinds=BOTH, headroom=False)
VARIANTS["probe + headroom gain(similarity)"] = dict(features=("similarity",), base="probe", kinds=BOTH, headroom=True)
VARIANTS["no probe: score(similarity, log10_n, transferability)"] = dict(
    features=("similarity", "log10_n", "transferability"), base=None, kinds=BOTH, headroom=False
)


def loto(evidence, features, base, kinds, headroom=DEFAULT_HEADROOM) -> list[dict]:
    """Each row forecast by a model fitted on the other targets' rows (of ``kinds``)."""
    out = []
    for target in sorted({r.target for r in evidence.rows}):
        train = [r for r in evidence.rows if r.target != target and r.kind in kinds]
        model = fit_gain_model(train, features, base, headroom)
        for row in (r for r in evidence.rows if r.target == target):
            p = model.predict(row.features)
            out.append({"row": row, "mean": p.mean, "sd": p.sd, "nearest": p.nearest, "distance": p.distance})
    return out


def coverage(results: list[dict], level: float, noise: bool = False) -> float:
    """Share of outcomes inside the central ``level`` interval (``noise``: widened by each outcome's
    own binomial variance, for the surface rows' small test splits)."""
    z = norm.ppf(0.5 + level / 2)
    inside = []
    for r in results:
        sd = np.sqrt(r["sd"] ** 2 + (r["row"].outcome_variance if noise else 0.0))
        inside.append(abs(r["row"].outcome - r["mean"]) <= z * sd)
    return float(np.mean(inside))


def summary(results: list[dict]) -> dict:
    judged = [r for r in results if r["row"].kind == "judged"]
    surface = [r for r in results if r["row"].kind == "surface"]
    err = [abs(r["row"].outcome - r["mean"]) for r in judged]
    with_z = [r for r in judged if r["row"].extra.get("z") is not None]
    return {
        "judged_cells": len(judged),
        "mae": float(np.mean(err)),
        "max_error": float(np.max(err)),
        "coverage": {f"{int(lv * 100)}": coverage(judged, lv) for lv in LEVELS},
        "mean_width_80": float(np.mean([2 * norm.ppf(0.9) * r["sd"] for r in judged])),
        "mae_vs_z": float(np.mean([abs(r["row"].extra["z"] - r["mean"]) for r in with_z])) if with_z else None,
        "mae_vs_k": float(np.mean([abs(r["row"].extra["k"] - r["mean"]) for r in judged if r["row"].extra.get("k")])),
        "surface_rows": len(surface),
        "surface_mae": float(np.mean([abs(r["row"].outcome - r["mean"]) for r in surface])) if surface else None,
        "surface_coverage_80": coverage(surface, 0.8, noise=True) if surface else None,
    }


def baselines(evidence) -> dict:
    judged = evidence.of_kind("judged")
    out = {}
    for name, get in (
        ("prior centre's validation score", lambda r: r.extra.get("prior_centre_val")),
        ("prior centre's judged score (f)", lambda r: r.extra.get("prior_centre_judge")),
        ("probe alone (no gain)", lambda r: r.features["probe"]),
    ):
        pairs = [(get(r), r.outcome) for r in judged if get(r) is not None]
        out[name] = {"cells": len(pairs), "mae": float(np.mean([abs(a - b) for a, b in pairs]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evidence", default=None, help="an evidence JSON (default: the shipped asset)")
    parser.add_argument("--variants", action="store_true", help="also score the other feature sets")
    parser.add_argument("--json", default=None, help="write the table, summary and reliability numbers here")
    args = parser.parse_args()
    evidence = load_evidence(args.evidence)
    results = loto(evidence, **SHIPPED)
    print(f"evidence: {evidence.path} ({len(evidence.rows)} rows)")
    print(f"model: outcome = {DEFAULT_BASE} + Bayesian-ridge gain on {DEFAULT_FEATURES}; leave one target out\n")
    print(f"{'cell':<16} {'forecast':>8} {'80% interval':>15} {'outcome':>8} {'of':>3} {'error':>7}  nearest")
    for r in results:
        row = r["row"]
        lo, hi = r["mean"] - norm.ppf(0.9) * r["sd"], r["mean"] + norm.ppf(0.9) * r["sd"]
        if row.kind != "judged":
            continue
        print(
            f"{row.cell:<16} {r['mean']:8.3f} {lo:7.3f}-{hi:.3f} {row.outcome:8.3f} {row.outcome_method:>3}"
            f" {row.outcome - r['mean']:+7.3f}  {r['nearest']} ({r['distance']:.2f})"
        )
    s = summary(results)
    print(
        f"\nMAE {s['mae'] * 100:.2f} points over {s['judged_cells']} judged cells (max {s['max_error'] * 100:.1f});"
        f" vs k {s['mae_vs_k'] * 100:.2f}; vs z (2 cells) {s['mae_vs_z'] * 100:.2f}"
    )
    print("coverage (nominal -> empirical): " + ", ".join(f"{k}% -> {v:.0%}" for k, v in s["coverage"].items()))
    print(f"mean 80% width {s['mean_width_80'] * 100:.1f} points")
    if s["surface_rows"]:
        print(
            f"surface rows (own test split, {s['surface_rows']}): MAE {s['surface_mae'] * 100:.2f} points,"
            f" 80% coverage with their binomial noise {s['surface_coverage_80']:.0%}"
        )
    print("\nbaselines on the judged cells:")
    base = baselines(evidence)
    for name, b in base.items():
        print(f"  {name:<34} MAE {b['mae'] * 100:.2f} points ({b['cells']} cells)")
    variants = {}
    if args.variants:
        print("\nvariants (leave one target out, judged cells):")
        for name, spec in VARIANTS.items():
            v = summary(loto(evidence, **spec))
            variants[name] = v
            print(
                f"  {name:<56} MAE {v['mae'] * 100:5.2f}  80% cov {v['coverage']['80']:.0%}"
                f"  width {v['mean_width_80'] * 100:4.1f}  surface MAE {v['surface_mae'] * 100:5.2f}"
            )
    if args.json:
        table = [
            {
                "cell": r["row"].cell,
                "kind": r["row"].kind,
                "forecast": r["mean"],
                "sd": r["sd"],
                "interval_80": [r["mean"] - norm.ppf(0.9) * r["sd"], r["mean"] + norm.ppf(0.9) * r["sd"]],
                "outcome": r["row"].outcome,
                "outcome_method": r["row"].outcome_method,
                "nearest": r["nearest"],
            }
            for r in results
        ]
        reliability = [{"nominal": lv, "empirical": s["coverage"][f"{int(lv * 100)}"]} for lv in LEVELS]
        payload = {"summary": s, "baselines": base, "reliability": reliability, "table": table, "variants": variants}
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
