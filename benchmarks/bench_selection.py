"""Selection rules under a small validation set: which finished trial should a study return?

Picking the trial with the highest validation score out of many, on ~90 validation images, is
a winner's curse: part of the winner's margin is noise. This benchmark asks whether another rule
picks protocols that score better on the held-out test split. It reads the studies that
``bench_search_quality.py`` ran (``--storage``, default ``benchmarks/out/search-quality.db``),
retrains **every** finished transfer trial's protocol on train+val exactly as ``tune`` retrains
its best (``retrain_and_test``: seeded, so the chosen trial's test score equals the one that
benchmark recorded) and scores it once on test. With every trial's test score known, any rule is
evaluated offline on the same trials:

- ``max-score``: highest validation score; ties broken by lower validation loss (the current
  ``best_transfer_trial``);
- ``one-se``: among the trials within one binomial standard error of the best score
  (``sqrt(p (1 - p) / n_val)``), the lowest validation loss;
- ``min-loss``: the lowest validation loss;
- ``oracle``: the best test score (the ceiling no rule can beat).

Retrained test scores are appended to a JSON-lines file as each finishes (the benchmark
resumes); ``--summary`` prints the table (mean test score of each rule's pick, and paired
differences against ``max-score`` with 95% t-intervals).

    OMP_NUM_THREADS=1 python benchmarks/bench_selection.py
    python benchmarks/bench_selection.py --summary
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

OUT = Path(__file__).parent / "out"
RULES = ("max-score", "one-se", "min-loss", "oracle")


def finished_trials(study) -> list:
    """The study's COMPLETE transfer trials (from-scratch controls excluded) that record a loss."""
    from optuna.trial import TrialState

    from autotransfer.core.schema import CONTROL_ATTR, VAL_LOSS_ATTR

    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(CONTROL_ATTR) != "scratch"
        and t.value is not None
        and isinstance(t.user_attrs.get(VAL_LOSS_ATTR), (int, float))
    ]


def pick(rule: str, rows: list[dict], n_val: int) -> dict:
    """The row ``rule`` selects among one study's ``rows`` (dicts with value, val_loss, test, number)."""
    if rule == "max-score":
        return max(rows, key=lambda r: (r["value"], -r["val_loss"], -r["number"]))
    if rule == "one-se":
        best = max(r["value"] for r in rows)
        se = math.sqrt(max(best * (1.0 - best), 1e-12) / n_val)
        near = [r for r in rows if r["value"] >= best - se - 1e-12]
        return min(near, key=lambda r: (r["val_loss"], r["number"]))
    if rule == "min-loss":
        return min(rows, key=lambda r: (r["val_loss"], r["number"]))
    if rule == "oracle":
        return max(rows, key=lambda r: (r["test"], -r["number"]))
    raise ValueError(f"rule must be one of {RULES!r}, but got {rule!r}")


def summary(records: list[dict]) -> str:
    """Mean test score of each rule's pick, and its paired difference against ``max-score``."""
    from bench_search_quality import t_interval

    if not records:
        return "no retrained trials recorded yet"
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["study"], []).append(r)
    picks: dict[str, dict[str, float]] = {rule: {} for rule in RULES}
    changed = {rule: 0 for rule in RULES}
    for name, rows in by.items():
        first = pick("max-score", rows, rows[0]["n_val"])
        for rule in RULES:
            chosen = pick(rule, rows, rows[0]["n_val"])
            picks[rule][name] = chosen["test"]
            changed[rule] += chosen["number"] != first["number"]
    studies = sorted(by)
    lines = [
        f"{len(studies)} studies, {len(records)} retrained trials "
        f"({sum(len(v) for v in by.values()) / max(len(by), 1):.1f} per study)",
        "",
        "| rule | mean test score (± 95% CI) | picks another trial than max-score | minus max-score (± 95% CI) | wins/ties/losses |",
        "|---|---|---|---|---|",
    ]
    for rule in RULES:
        scores = [picks[rule][s] for s in studies]
        mean, half = t_interval(scores)
        diffs = [picks[rule][s] - picks["max-score"][s] for s in studies]
        dmean, dhalf = t_interval(diffs)
        w, t, l_ = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs)
        lines.append(
            f"| {rule} | {mean:.3f} ± {half:.3f} | {changed[rule]}/{len(studies)} |"
            f" {dmean:+.3f} ± {dhalf:.3f} | {w}/{t}/{l_} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=f"sqlite:///{OUT / 'search-quality.db'}")
    parser.add_argument("--results", default=str(OUT / "selection.jsonl"))
    parser.add_argument("--summary", action="store_true", help="only print the table of recorded results")
    args = parser.parse_args()

    from autotransfer.pipeline.search_only import ResultLog

    log = ResultLog(args.results)
    if not args.summary:
        import optuna
        import torch

        from autotransfer.core.protocol import Protocol
        from autotransfer.core.schema import VAL_LOSS_ATTR
        from autotransfer.handback.final import retrain_and_test
        from autotransfer.search.prepared import prepare_data
        from autotransfer.search.storage import open_storage
        from autotransfer.search.study import read_settings

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        store = open_storage(args.storage)
        have = log.keys("study", "number")
        for summary_ in sorted(optuna.get_all_study_summaries(store), key=lambda s: s.study_name):
            study = optuna.load_study(study_name=summary_.study_name, storage=store)
            trials = [t for t in finished_trials(study) if (study.study_name, t.number) not in have]
            if not trials:
                continue
            settings = read_settings(study)
            prepared = prepare_data(settings)
            for t in trials:
                _, test, _ = retrain_and_test(Protocol.from_dict(t.params), settings, prepared)
                log.append(
                    {
                        "study": study.study_name,
                        "number": t.number,
                        "value": float(t.value),
                        "val_loss": float(t.user_attrs[VAL_LOSS_ATTR]),
                        "test": test,
                        "n_val": len(prepared.val),
                    }
                )
                print(
                    f"{study.study_name} trial {t.number}: val {t.value:.3f} loss"
                    f" {t.user_attrs[VAL_LOSS_ATTR]:.3f} -> test {test:.3f}",
                    flush=True,
                )
    print(summary(log.records))


if __name__ == "__main__":
    main()
