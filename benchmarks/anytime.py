"""Issue 27's methods for ``bench_judged.py``: accuracy for the compute spent, judged on images no
trial saw.

- G: the plain 12-cell grid (``prior.grid_protocols``: ELR {0.1, 0.3, 1} x freeze {0, 3/8} x
  re-init {0, 2 groups}, SGD momentum 0.9, head x1, no weight decay, BN adapting, one stage), each
  cell retrained by ``retrain_and_test`` on train+val at the study's budget; its top 3 by the
  study's test split, softmax-averaged. The row also holds every cell's test and judge score, the
  best cell's judge score, and the 12 retrains' wall and CPU seconds: the compute unit of the others.
- q6, q3, q23, q1: ``tune --time-budget`` at 1/6, 1/3, 2/3 and 1x the grid's compute measured in
  the same run (G first): its CPU seconds, which on one thread per process are the wall seconds of
  a quiet machine and do not grow with other load; the folder it wrote judged as a user loads it.
- r6, r3, r23, r1: random search over the same space at the same budgets, through the same
  trainer, pruner off, no prior, nothing enqueued (no controls), the same pick and final stage.
- z: the default job (``autotransfer tune TARGET`` with no ``--trials`` and no ``--time-budget``).

Every row records ``wall_s`` and ``cpu_s`` (this process's user + system seconds, which other
load on the machine moves less than wall time) and the job's ledger; ``summary`` prints the
anytime table, each method against G paired by cell.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

FRACTIONS = {"6": 1 / 6, "3": 1 / 3, "23": 2 / 3, "1": 1.0}
ANYTIME = ("G", "z", *(f"q{k}" for k in FRACTIONS), *(f"r{k}" for k in FRACTIONS))
NAMES = {
    "G": "grid top-3 by test",
    "z": "tune, default job",
    **{f"q{k}": f"tune --time-budget {k if k == '1' else '1/' + k if k != '23' else '2/3'} grid" for k in FRACTIONS},
    **{f"r{k}": f"random search, {k if k == '1' else '1/' + k if k != '23' else '2/3'} grid" for k in FRACTIONS},
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> "Timer":
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = cpu_seconds() - self.cpu0


def anytime_settings(target: str, n: int, seed: int):
    """``tune`` as a user runs it on a bench_judged cell (schedules searched, the default pick)."""
    from autotransfer.core.settings import StudySettings

    return StudySettings(
        target=f"builtin:{target}",
        model="efficientnet_lite0",
        n=n,
        seed=seed,
        resolution=64,
        prior="quadrant",
        device="cpu",
    )


def grid_row(settings, judge, prepared) -> dict:
    """Method G: the 12 cells retrained on train+val, scored on test and judged; top 3 by test."""
    from autotransfer.backbones import create_backbone
    from autotransfer.handback.final import retrain_and_test
    from autotransfer.prior import grid_protocols

    groups = create_backbone(settings.model, num_classes=settings.num_classes).num_groups
    cells, backbones, wall, cpu = [], [], 0.0, 0.0
    for name, protocol in grid_protocols(groups):
        with Timer() as t:
            backbone, test, _ = retrain_and_test(protocol, settings, prepared)
        wall, cpu = wall + t.wall, cpu + t.cpu
        score = judge(backbone, settings.metric)
        cells.append({"cell": name, "test": test, "judge": score, "wall_s": round(t.wall, 1)})
        backbones.append(backbone)
        print(f"  grid {name}: test {test:.3f} judge {score:.4f} ({t.wall:.0f} s)", file=sys.stderr, flush=True)
    order = sorted(range(len(cells)), key=lambda i: (cells[i]["test"], -i), reverse=True)[:3]
    return {
        "score": judge([backbones[i] for i in order], settings.metric),
        "top3": [cells[i]["cell"] for i in order],
        "best_cell": max(c["judge"] for c in cells),
        "cells": cells,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
    }


def fresh_study(url: str, study: str, runs: Path) -> None:
    """Delete study ``study`` and its folder when a run cut short left them (no row was recorded)."""
    import shutil

    import optuna

    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import study_exists

    store = open_storage(url)
    if study_exists(store, study):
        optuna.delete_study(study_name=study, storage=store)
    shutil.rmtree(runs, ignore_errors=True)


def tuned_row(settings, study: str, url: str, runs: Path, judge, folder_members, budget, *, random=False) -> dict:
    """Methods q, r and z: one ``tune`` job, its folder judged; ``random`` runs a random search."""
    import autotransfer.pipeline.tune as tune_module
    import autotransfer.search.study as study_module
    from autotransfer.pipeline.tune import tune

    patched: list[tuple[object, str, Callable]] = []
    if random:
        import optuna

        def random_sampler(seed, config=None):
            return optuna.samplers.RandomSampler(seed=seed)

        patched = [
            (study_module, "make_sampler", random_sampler),
            (tune_module, "fixed_protocols", lambda prior, groups, **_: []),
        ]
        settings = replace(settings, prior="none", prune=False)
    fresh_study(url, study, runs)  # a budget's compute counts from nothing: a cut-short run starts over
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patched]
    for obj, name, value in patched:
        setattr(obj, name, value)
    try:
        with Timer() as t:
            result = tune(settings, study_name=study, storage=url, runs_dir=runs, export_dir=runs, time_budget=budget)
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
    row = {
        "score": judge(folder_members(result.model_path), result.settings.metric),
        "wall_s": round(t.wall, 1),
        "cpu_s": round(t.cpu, 1),
        "budget_s": None if budget in (None, "auto") else round(float(budget), 1),
        "test": result.test_score,
        "trained_on": result.trained_on,
        "search_trials": result.n_search_trials,
        "ledger": result.ledger,
        "plan": result.plan,
    }
    if result.trained_on != "train+val":
        # what the retrain on train+val would have bought (not counted in this row's compute)
        row["retrained_instead"] = retrained_members(result, url, study, judge)
    return row


def retrained_members(result, url: str, study: str, judge) -> float:
    """The judge score of the handed-back members' protocols retrained on train+val (the final
    stage a larger budget runs), paired with the trial models the job handed back."""
    from autotransfer.core.protocol import Protocol
    from autotransfer.handback.final import retrain_and_test
    from autotransfer.search.prepared import prepare_data
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import load_study, read_attr, read_settings

    tuned = load_study(study, open_storage(url))
    settings = read_settings(tuned)
    prepared = prepare_data(settings)
    members = [int(m) for m in (read_attr(tuned, "final") or {}).get("members") or []]
    trials = {t.number: t for t in tuned.trials}
    backbones = [retrain_and_test(Protocol.from_dict(trials[m].params), settings, prepared)[0] for m in members]
    return judge(backbones, settings.metric)


def run_anytime(cell: str, done: set, record: Callable, methods: tuple[str, ...], out: Path, judge_for) -> None:
    """The anytime methods of ``cell`` (``target:N:seed``) that ``methods`` names and ``done`` lacks."""
    from autotransfer.search.prepared import prepare_data
    from autotransfer.search.run import validation_counts

    target, n, seed = cell.split(":")
    settings = anytime_settings(target, int(n), int(seed))
    url = f"sqlite:///{out / f'anytime-{target}-{n}-{seed}.db'}"
    runs = out / "anytime-runs" / cell.replace(":", "-")
    judge, folder_members, rows = judge_for(settings)
    from autotransfer.estimate.size import size_stats

    prepared = prepare_data(settings)
    metric = size_stats(prepared.trainval).metric  # as the estimator measures it in tune
    resolved = settings.resolved(
        fingerprint=prepared.fingerprint,
        metric=metric,
        num_classes=len(prepared.dataset.classes),
        n_train=len(prepared.train),
        **validation_counts(prepared, metric),
    )
    grid = rows.get((cell, "G"))
    if grid is None and "G" in methods:
        grid = grid_row(resolved, judge, prepared)
        record("G", grid.pop("score"), **grid)
        grid = {**grid}
    if grid is None:
        return  # the budgets are fractions of the grid's compute: it runs first
    # the unit is the grid's CPU seconds: one thread per process, so on a quiet machine wall and CPU
    # seconds agree, and the CPU seconds of the grid do not grow with other load while it ran
    unit = float(grid["cpu_s"])
    for method in methods:
        if method == "G" or (cell, method) in done or method not in ANYTIME:
            continue
        if method == "z":
            row = tuned_row(settings, "z", url, runs / "z", judge, folder_members, "auto")
        else:
            budget = FRACTIONS[method[1:]] * unit
            row = tuned_row(
                settings, method, url, runs / method, judge, folder_members, budget, random=method[0] == "r"
            )
        row["grid_cpu_s"] = unit
        row["of_grid"] = round(row["cpu_s"] / unit, 3)
        record(method, row.pop("score"), **row)


def anytime_summary(rows: list[dict]) -> str:
    """The anytime table: per method, mean judge score, mean compute as a multiple of the grid's,
    and the paired difference to G with a 95% t-interval over cells."""
    import numpy as np
    from scipy import stats

    by = {(r["cell"], r["method"]): r for r in rows}
    cells = sorted({r["cell"] for r in rows if r["method"] == "G"})
    lines = [
        "| method | cells | judged (mean) | wall / grid wall | CPU s / grid CPU s (the compute) | − G (points) | 95% CI | worst cell − G (SE) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in ANYTIME:
        have = [c for c in cells if (c, m) in by]
        if not have:
            continue
        xs = [by[(c, m)]["judge"] for c in have]
        g = [by[(c, "G")]["judge"] for c in have]
        walls = [by[(c, m)]["wall_s"] / by[(c, "G")]["wall_s"] for c in have]
        cpus = [by[(c, m)].get("cpu_s", math.nan) / by[(c, "G")].get("cpu_s", math.nan) for c in have]
        d = 100 * (np.array(xs) - np.array(g))
        if len(d) > 1 and m != "G":
            half = float(stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d)))
            ci = f"{d.mean() - half:+.1f} to {d.mean() + half:+.1f}"
        else:
            ci = "—"
        k = by[(have[0], m)].get("judge_images", 1000)
        worst = min((100 * (by[(c, m)]["judge"] - by[(c, "G")]["judge"]), c) for c in have)
        p = by[(worst[1], "G")]["judge"]
        se = 100 * math.sqrt(2 * p * (1 - p) / k)
        lines.append(
            f"| {m}: {NAMES[m]} | {len(have)} | {100 * np.mean(xs):.1f} | {np.mean(walls):.2f} |"
            f" {np.nanmean(cpus):.2f} | {d.mean():+.1f} | {ci} |"
            f" {worst[0]:+.1f} ({worst[1]}; SE {se:.1f}) |"
        )
    best = [by[(c, "G")].get("best_cell") for c in cells if by[(c, "G")].get("best_cell") is not None]
    if best:
        lines.append(
            f"\ngrid's best cell (an oracle on the judge set): mean {100 * np.mean(best):.1f} over {len(best)} cells"
        )
    return "\n".join(lines)
