"""What a finished sweep says about the survey's claims (issue 5): does the optimal ELR and the
re-init fraction rise as similarity falls, and does freezing help more as size falls?

It reads a sweep's surface store and study storage (default: ``studies/sweep-lab.yaml``) and
prints markdown:

1. every recorded optimum (mean over seeds per target and size): similarity, best log10 ELR,
   freeze / reinit fractions, validation and test score;
2. Spearman correlations (with p-values) of each optimal parameter with similarity (pooled
   over sizes, and within each size) and with log10 N;
3. the freezing advantage per study: the best COMPLETE search trial or linear-probe control
   with freeze_frac >= 0.5 minus the best COMPLETE search trial with freeze_frac < 0.5
   (validation score; NaN when no unfrozen trial completed), and its Spearman correlation
   with log10 N;
4. paired by target (same target and seed, N = smallest minus largest size): how each optimal
   parameter and the freezing advantage change as the target shrinks.

    python benchmarks/bench_surface_science.py [--spec studies/other.yaml]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ("log10_elr", "reinit_frac", "freeze_frac")


def freeze_advantage(study) -> tuple[float, int, int]:
    """``(best frozen - best unfrozen, #frozen, #unfrozen)`` over COMPLETE search trials and the
    linear-probe controls (never pruned; freeze_frac 1)."""
    import optuna

    from autotransfer.core.schema import CONTROL_ATTR
    from autotransfer.search.study import search_trials

    complete = (optuna.trial.TrialState.COMPLETE,)
    done = [t for t in search_trials(study, states=complete) if t.value is not None]
    done += [
        t
        for t in study.get_trials(deepcopy=False, states=complete)
        if t.user_attrs.get(CONTROL_ATTR) == "probe" and t.value is not None
    ]
    frozen = [t.value for t in done if t.params.get("freeze_frac", 0.0) >= 0.5]
    unfrozen = [t.value for t in done if t.params.get("freeze_frac", 0.0) < 0.5]
    if not frozen or not unfrozen:
        return float("nan"), len(frozen), len(unfrozen)
    return max(frozen) - max(unfrozen), len(frozen), len(unfrozen)


def spearman(x: list[float], y: list[float]) -> str:
    """``rho (p = ..., n = ...)`` over the pairs where both are finite."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 4:
        return f"n = {len(pairs)} (too few)"
    rho, p = stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return f"{rho:+.2f} (p = {p:.3f}, n = {len(pairs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "studies" / "sweep-lab.yaml"))
    parser.add_argument("--exclude", default="", help="comma-separated targets to leave out (a sensitivity check)")
    args = parser.parse_args()
    os.chdir(ROOT)

    from autotransfer.pipeline.sweep import load_sweep_spec
    from autotransfer.search.storage import open_storage, storage_location
    from autotransfer.search.study import load_study
    from autotransfer.surface import SurfaceStore

    spec = load_sweep_spec(args.spec)
    excluded = {t for t in args.exclude.split(",") if t}
    points = [p for p in SurfaceStore(spec.store).load(model=spec.model) if p.target not in excluded]
    storage = open_storage(storage_location(spec.storage))
    rows = []
    for p in points:
        adv, n_frozen, n_unfrozen = freeze_advantage(load_study(p.study, storage))
        rows.append(
            {
                "target": p.target,
                "n": p.n,
                "seed": p.seed,
                "log10_n": p.log10_n,
                "similarity": p.similarity,
                "log10_elr": p.protocol["log10_elr"],
                "reinit_frac": p.protocol["reinit_frac"],
                "freeze_frac": p.protocol["freeze_frac"],
                "f": p.freeze,
                "r": p.reinit,
                "G": p.num_groups,
                "score": p.score,
                "test": p.test_score if p.test_score is not None else float("nan"),
                "adv": adv,
                "n_frozen": n_frozen,
                "n_unfrozen": n_unfrozen,
            }
        )
    print(
        f"{len(rows)} studies of {spec.model} from {spec.store}"
        + (f" (left out: {', '.join(sorted(excluded))})" if excluded else "")
        + "\n"
    )
    print(
        "| target | N | seeds | similarity | log10 ELR | freeze_frac (f) | reinit_frac (r) | val | test | freezing advantage |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted(
        {(r["target"], r["n"]) for r in rows},
        key=lambda k: (-sum(r["similarity"] for r in rows if r["target"] == k[0]), k[1]),
    )
    for target, n in keys:
        group = [r for r in rows if r["target"] == target and r["n"] == n]

        def mean(key: str, group: list[dict] = group) -> float:
            vals = [r[key] for r in group if r[key] is not None and math.isfinite(r[key])]
            return sum(vals) / len(vals) if vals else float("nan")

        fr = "/".join(f"{r['f']}" for r in group)
        rr = "/".join(f"{r['r']}" for r in group)
        print(
            f"| {target.removeprefix('builtin:')} | {n} | {len(group)} | {mean('similarity'):.2f} |"
            f" {mean('log10_elr'):+.2f} | {mean('freeze_frac'):.2f} ({fr}) | {mean('reinit_frac'):.2f} ({rr}) |"
            f" {mean('score'):.3f} | {mean('test'):.3f} | {mean('adv'):+.3f} |"
        )
    sizes = sorted({r["n"] for r in rows if r["n"] in spec.sizes})
    print(
        "\n| optimal parameter | Spearman with similarity (all sizes) | "
        + " | ".join(f"with similarity at N = {n}" for n in sizes)
        + " | with log10 N |"
    )
    print("|---|---|" + "---|" * len(sizes) + "---|")
    for param in PARAMS + ("adv",):
        label = "freezing advantage" if param == "adv" else param
        by_size = [
            spearman([r["similarity"] for r in rows if r["n"] == n], [r[param] for r in rows if r["n"] == n])
            for n in sizes
        ]
        print(
            f"| {label} | {spearman([r['similarity'] for r in rows], [r[param] for r in rows])} | "
            + " | ".join(by_size)
            + f" | {spearman([r['log10_n'] for r in rows], [r[param] for r in rows])} |"
        )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        print(f"\nPaired by target and seed: value at N = {small} minus value at N = {large}\n")
        print("| target | " + " | ".join(("freezing advantage" if p == "adv" else p) for p in PARAMS + ("adv",)) + " |")
        print("|---|" + "---|" * (len(PARAMS) + 1))
        deltas: dict[str, list[float]] = {p: [] for p in PARAMS + ("adv",)}
        by_key = {(r["target"], r["seed"], r["n"]): r for r in rows}
        for target in dict.fromkeys(r["target"] for r in rows):
            pairs = [
                (a, by_key[(target, seed, large)])
                for (t, seed, n), a in by_key.items()
                if t == target and n == small and (target, seed, large) in by_key
            ]
            cells = []
            for param in PARAMS + ("adv",):
                d = [a[param] - b[param] for a, b in pairs if math.isfinite(a[param]) and math.isfinite(b[param])]
                deltas[param] += d
                cells.append(f"{sum(d) / len(d):+.2f} ({len(d)})" if d else "n/a")
            print(f"| {target.removeprefix('builtin:')} | " + " | ".join(cells) + " |")
        print(
            "| **all: mean (pairs, positive/negative)** | "
            + " | ".join(
                f"{sum(v) / len(v):+.2f} ({len(v)}, {sum(x > 0 for x in v)}/{sum(x < 0 for x in v)})" if v else "n/a"
                for v in deltas.values()
            )
            + " |"
        )


if __name__ == "__main__":
    main()
