"""Replay pruning rules on real learning curves that ran to the full budget (issue 14, part 1).

The plain-TPE studies of ``bench_judged.py`` (method d) run every trial to the end without pruning,
so each trial's validation score at every step is known. This script replays those curves, trial
by trial in their original order, through a pruner in an in-memory Optuna study and counts, per
rule:

- pruned: trials the rule would have stopped, and how many of them at the first rung;
- lost: pruned trials whose final validation score reached the study's top 3 (a rule that loses
  these prunes signal, not noise);
- lost (chance+): pruned trials that ended more than 2 standard errors above chance (a protocol that
  learned, though maybe not a winner);
- steps: the share of the study's training steps the rule would have spent.

Rules: the first release's (optuna ``SuccessiveHalvingPruner``, first rung at 1/6 of the budget,
no margin), and ``NoiseAwarePruner`` variants (rungs at thirds or sixths, margin z = 0 or 1).

    python benchmarks/bench_pruning_rule.py                      # every judged-*.db in benchmarks/out
"""

from __future__ import annotations

import argparse
import glob
import math
import warnings
from pathlib import Path

import optuna

from autotransfer.search.pruning import NoiseAwarePruner, rung_steps
from autotransfer.search.study import read_settings

OUT = Path(__file__).parent / "out"


def rules(settings) -> dict[str, optuna.pruners.BasePruner]:
    steps, every = int(settings.steps), int(settings.eval_every)
    n_eff = settings.val_effective or settings.val_images
    thirds = rung_steps(steps, every, (1 / 3, 2 / 3))
    sixths = rung_steps(steps, every, (1 / 6, 1 / 2))
    return {
        "first release (SHA, rung 1/6, no margin)": optuna.pruners.SuccessiveHalvingPruner(
            min_resource=every, reduction_factor=3, min_early_stopping_rate=0
        ),
        "rungs 1/6, 1/2, margin 1 SE": NoiseAwarePruner(sixths, n_eff, z=1.0),
        "rungs 1/3, 2/3, no margin": NoiseAwarePruner(thirds, n_eff, z=0.0),
        "rungs 1/3, 2/3, margin 1 SE (tune's rule)": NoiseAwarePruner(thirds, n_eff, z=1.0),
        "rungs 1/3, 2/3, margin 2 SE": NoiseAwarePruner(thirds, n_eff, z=2.0),
    }


def replay(curves: list[list[tuple[int, float]]], pruner: optuna.pruners.BasePruner) -> list[int | None]:
    """The step at which ``pruner`` stops each curve (``None``: it runs to the end)."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    stopped: list[int | None] = []
    for curve in curves:
        trial = study.ask()
        at = None
        for step, value in curve:
            trial.report(value, step)
            if step < curve[-1][0] and trial.should_prune():
                at = step
                break
        if at is None:
            study.tell(trial, curve[-1][1])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        stopped.append(at)
    return stopped


def analyse(paths: list[str]) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    totals: dict[str, dict[str, float]] = {}
    studies = 0
    for path in paths:
        url = f"sqlite:///{path}"
        try:
            study = optuna.load_study(study_name="d", storage=url)
        except KeyError:
            continue
        settings = read_settings(study)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        curves = [sorted(t.intermediate_values.items()) for t in complete if t.intermediate_values]
        if len(curves) < 10:
            continue
        studies += 1
        finals = [c[-1][1] for c in curves]
        top3 = sorted(finals, reverse=True)[min(2, len(finals) - 1)]
        chance = 1.0 / settings.num_classes if settings.num_classes else 0.5
        n_eff = settings.val_effective or settings.val_images
        learned = chance + 2 * math.sqrt(chance * (1 - chance) / max(n_eff, 1))
        full_steps = sum(c[-1][0] for c in curves)
        for name, pruner in rules(settings).items():
            stopped = replay(curves, pruner)
            first = (
                pruner.rungs[0] if isinstance(pruner, NoiseAwarePruner) and pruner.rungs else int(settings.eval_every)
            )
            row = totals.setdefault(
                name, {"trials": 0, "pruned": 0, "first": 0, "lost": 0, "lost_learned": 0, "steps": 0.0, "full": 0.0}
            )
            row["trials"] += len(curves)
            row["full"] += full_steps
            for curve, at, final in zip(curves, stopped, finals):
                row["steps"] += at if at is not None else curve[-1][0]
                if at is None:
                    continue
                row["pruned"] += 1
                row["first"] += at == first
                row["lost"] += final >= top3
                row["lost_learned"] += final > learned
    lines = [
        f"{studies} plain-TPE studies (no pruning, every curve to the end)",
        "",
        "| rule | pruned | at the first rung | lost a top-3 trial | lost a trial that learned | steps spent |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in totals.items():
        lines.append(
            f"| {name} | {r['pruned']:.0f} of {r['trials']:.0f} | {r['first']:.0f} | {r['lost']:.0f} |"
            f" {r['lost_learned']:.0f} | {100 * r['steps'] / max(r['full'], 1):.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbs", default=str(OUT / "judged-*.db"), help="glob of judged study databases")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(analyse(sorted(glob.glob(args.dbs))))


if __name__ == "__main__":
    main()
