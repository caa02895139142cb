"""Search quality: autotransfer (prior + search) against the survey's fixed recommended protocol
and plain wide TPE, at equal wall-clock, on a similar and a dissimilar target (issue 4).

For each (target, seed), the three methods share the seeded subsample and its splits:

- ``autotransfer``: estimate the task, centre the ranges on the estimator's prior, enqueue the
  prior, the survey's two protocols and a linear probe, then multivariate TPE with
  successive-halving pruning until the wall-clock budget is spent (estimation included).
- ``wide-tpe``: the same sampler and pruner over the wide ranges (``prior.none.wide_prior``),
  nothing enqueued, for the same budget.
- ``recommended``: the survey's fixed protocol, no search.

Every method's chosen protocol is then retrained on train+val for the study's step budget and
scored once on the held-out test split. Controls are not run (they are evidence, not search).
Methods run in a rotating order per seed so machine load falls on all of them alike.

Results are appended to a JSON-lines file as each run ends, so an interrupted benchmark
resumes where it stopped; ``--summary`` prints the table (mean and 95% t-interval).

    OMP_NUM_THREADS=1 python benchmarks/bench_search_quality.py --seeds 5 --budget 150
    python benchmarks/bench_search_quality.py --summary
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TARGETS = ("builtin:fashion-mnist?classes=5-9", "builtin:elpv")
METHODS = ("autotransfer", "wide-tpe", "recommended")
OUT = Path(__file__).parent / "out"


def run_one(target: str, seed: int, method: str, args: argparse.Namespace, storage: str) -> dict:
    """One method on one (target, seed): search (if any), retrain the choice on train+val, test."""
    from autotransfer.backbones import create_backbone
    from autotransfer.core.protocol import Protocol
    from autotransfer.core.settings import StudySettings
    from autotransfer.estimate import TaskEstimator
    from autotransfer.handback.final import retrain_and_test
    from autotransfer.pipeline.search_only import run_search_study
    from autotransfer.prior import recommended_protocol
    from autotransfer.search.prepared import prepare_data
    from autotransfer.search.study import best_transfer_trial, search_trials

    base = StudySettings(
        target=target,
        model=args.model,
        n=args.n,
        seed=seed,
        resolution=args.resolution,
        steps=args.steps,
        trials=10**6,
        prior="quadrant" if method == "autotransfer" else "none",
    )
    prepared = prepare_data(base)
    backbone = create_backbone(args.model, num_classes=len(prepared.dataset.classes))
    started = time.perf_counter()  # data loading is common to every method: the budget starts here
    settings = base
    profile = None
    if method == "autotransfer":
        profile = TaskEstimator().fit(prepared.trainval, backbone)
        metric = profile.size.metric
    else:
        from autotransfer.estimate.size import size_stats

        metric = size_stats(prepared.trainval).metric
    settings = base.resolved(
        fingerprint=prepared.fingerprint,
        metric=metric,
        num_classes=len(prepared.dataset.classes),
        n_train=len(prepared.train),
    )
    record = {
        "target": target,
        "seed": seed,
        "method": method,
        "n": args.n,
        "steps": settings.steps,
        "metric": metric,
        "budget_s": args.budget,
    }
    if method == "recommended":
        protocol, val_score, trials = recommended_protocol(), None, 0
    else:
        name = f"{method}-{target.removeprefix('builtin:')}-s{seed}".replace("?", "_")
        left = args.budget - (time.perf_counter() - started)
        study = run_search_study(
            name,
            storage,
            settings,
            prepared,
            backbone,
            prior=profile.prior if method == "autotransfer" else None,
            trials=settings.trials,
            timeout=max(1.0, left),
        )
        best = best_transfer_trial(study)
        if best is None:
            protocol, val_score = recommended_protocol(), None
            record["note"] = "no trial completed in the budget: fell back to the recommended protocol"
        else:
            protocol, val_score = Protocol.from_dict(best.params), float(best.value)
        trials = len(search_trials(study))
    record["search_s"] = round(time.perf_counter() - started, 1)
    _, test_score, _ = retrain_and_test(protocol, settings, prepared)
    record.update(
        val_score=val_score,
        test_score=test_score,
        trials=trials,
        protocol=protocol.to_dict(),
        total_s=round(time.perf_counter() - started, 1),
    )
    return record


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% Student-t interval."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def summary(results: list[dict]) -> str:
    """A markdown table: per target and method, the test score mean ± 95% CI, trials and seconds."""
    lines = [
        "| target | method | seeds | test score (mean ± 95% CI) | search trials (mean) | search s (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for target in dict.fromkeys(r["target"] for r in results):
        for method in METHODS:
            rows = [r for r in results if r["target"] == target and r["method"] == method]
            if not rows:
                continue
            mean, half = t_interval([r["test_score"] for r in rows])
            lines.append(
                f"| {target} | {method} | {len(rows)} | {mean:.3f} ± {half:.3f} |"
                f" {sum(r['trials'] for r in rows) / len(rows):.1f} | {sum(r['search_s'] for r in rows) / len(rows):.0f} |"
            )
    # paired differences: autotransfer minus each baseline, same (target, seed)
    lines += ["", "| target | autotransfer minus | mean difference ± 95% CI | wins/ties/losses |", "|---|---|---|---|"]
    for target in dict.fromkeys(r["target"] for r in results):
        by = {(r["method"], r["seed"]): r["test_score"] for r in results if r["target"] == target}
        for other in METHODS[1:]:
            diffs = [
                by[("autotransfer", s)] - by[(other, s)] for (m, s) in by if m == other and ("autotransfer", s) in by
            ]
            if diffs:
                mean, half = t_interval(diffs)
                w, t, l_ = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs)
                lines.append(f"| {target} | {other} | {mean:+.3f} ± {half:.3f} | {w}/{t}/{l_} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--model", default="fashion-source")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--budget", type=float, default=150.0, help="wall-clock seconds of search per method")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--results", default=str(OUT / "search-quality.jsonl"))
    parser.add_argument("--summary", action="store_true", help="only print the table of recorded results")
    args = parser.parse_args()

    import torch

    from autotransfer.pipeline.search_only import ResultLog

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log = ResultLog(args.results)
    done = log.records
    if not args.summary:
        storage = log.storage
        have = log.keys("target", "seed", "method")
        for seed in range(args.seeds):
            for target in args.targets.split(","):
                order = METHODS[seed % 3 :] + METHODS[: seed % 3]
                for method in order:
                    if (target, seed, method) in have:
                        continue
                    record = run_one(target, seed, method, args, storage)
                    log.append(record)
                    print(
                        f"{target} seed {seed} {method}: test {record['test_score']:.3f}"
                        f" ({record['trials']} trials, {record['total_s']:.0f} s)",
                        flush=True,
                    )
    print(summary(done))


if __name__ == "__main__":
    main()
