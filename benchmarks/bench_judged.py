"""The judged benchmark (issue 14): does the model ``tune`` hands back beat fixed recipes, plain
TPE and its own prior, on images that no trial saw?

Cells: targets animals, elpv, mnist5k; N = 200 with seeds 0-2 and N = 1000 with seed 0;
``efficientnet_lite0`` at 64 px; 20 search trials. Judge set: up to 1,000 images of the target
outside the study's subsample (stratified, one fixed draw per target and N), which no trial
trained or validated on. Every model below is trained on train+val at the study's budget and
scored on the judge set:

- h: the model ``tune`` hands back (its pick, retrained; a fallback if the retrain broke; for the
  ``ensemble`` rule, the mean softmax of its members);
- a: the classic tutorial recipe: full fine-tuning, SGD lr 0.001, momentum 0.9, head at lr x1;
- b: the survey's recommended protocol (``recommended_protocol``);
- c: the linear probe (``linear_probe_protocol``);
- d: plain Optuna TPE over the wide ranges: no prior, nothing enqueued (no controls), no pruning,
  the same number of trials, handing back its best validation trial;
- e: the best judge score over all of h's study's completed transfer trials (what it tried);
- f: the prior's centre alone (one trial, no search).

Issue 18 adds two methods, run only when named in ``--methods``:

- s: ``tune`` as h, but searching the schedules too (one-stage, lp-ft, gradual; h searches
  one-stage only, as every h row before schedules existed did);
- t: h's study with self-training on ``UNLABELLED`` images of the target's pool outside the
  study's subsample and the judge set (labels removed): the model ``tune`` hands back then, the
  student when it beat its teacher on validation, else the teacher (= h);
- u: as t, with the students always kept: what self-training itself does on unseen images;
- x: as e, over s's study: the best judge score of every transfer trial s completed;
- p, g: h's members (one-stage protocols) retrained with schedule lp-ft (stage 0.3) or gradual
  (stage 0.4), everything else equal: the schedule's own effect, free of the search's noise.

Session 10 adds two more, run only when named in ``--methods``:

- k: s's study re-picked by the settled score (``handback.pick.pick_candidates`` as it is now: the
  mean of each trial's last ``SETTLE_EVALS`` validation scores), its members retrained and judged
  as an ensemble; when the members are s's own, s's recorded score (the same retrains);
- m: the same over h's study.

Issue 27 adds the anytime methods (``benchmarks/anytime.py``), run only when named in
``--methods``: G (the 12-cell grid, top 3 by test), q6/q3/q23/q1 (``tune --time-budget`` at 1/6,
1/3, 2/3 and 1x the grid's compute, measured in the same run), r6/r3/r23/r1 (random search at
those budgets) and z (the default job); ``--summary --anytime`` prints their table:

    OMP_NUM_THREADS=1 python benchmarks/bench_judged.py --cells animals:200:0 --methods G,q3,q1,z,r3,r1

Resumable per (target, N, seed, method): results append to a JSONL file, and a study that was cut
short resumes from its storage. Run one process per core with ``--cells``:

    python benchmarks/bench_judged.py --cells demo     # the embedded demo (h and its probe control), 2 threads
    OMP_NUM_THREADS=1 python benchmarks/bench_judged.py --cells elpv:200:0,animals:200:0 &
    OMP_NUM_THREADS=1 python benchmarks/bench_judged.py --cells mnist5k:200:0,elpv:200:1 &
    python benchmarks/bench_judged.py --summary

The summary pairs methods by (target, N, seed): mean differences with 95% t-intervals over cells,
and per (target, N) the mean judge score of each method with its binomial standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

OUT = Path(__file__).parent / "out"
RESULTS = Path(__file__).parent / "judged.jsonl"
DEFAULT_CELLS = [f"{t}:200:{s}" for s in (0, 1, 2) for t in ("elpv", "animals", "mnist5k")] + [
    f"{t}:1000:0" for t in ("elpv", "animals", "mnist5k")
]
METHODS = ("h", "a", "b", "c", "f", "d", "e")
#: Issue 18's methods (see the docstring); compared with h, paired by cell.
EXTRA = ("s", "t", "u", "p", "g", "x", "k", "m")
#: k and m: the study whose recorded pick each re-picks with the settled score.
REPICKED = {"k": "s", "m": "h"}
#: p and g: h's handed-back members re-run with one schedule each, at the prior's stage fraction
#: for it (``prior.quadrant``): the schedule's own effect, paired with h member by member.
RESCHEDULED = {"p": "lp-ft", "g": "gradual"}
UNLABELLED = 2000
NAMES = {
    "s": "tune with schedules",
    "t": "tune + self-training",
    "u": "self-training, student always kept",
    "p": "h's members as lp-ft",
    "g": "h's members as gradual",
    "x": "best tried by s",
    "k": "s re-picked by settled score",
    "m": "h re-picked by settled score",
    "h": "tune (handed back)",
    "a": "classic recipe",
    "b": "survey recommended",
    "c": "linear probe",
    "d": "plain TPE",
    "e": "best tried",
    "f": "prior centre",
}
JUDGE_SEED = 12345
TRIALS = 20


def settings_for(target: str, n: int, seed: int, pick: str | None = None):
    from autotransfer.core.settings import StudySettings

    if target == "demo":  # the embedded default job, as `autotransfer tune` runs it
        from autotransfer.search.demo import DEFAULT_SETTINGS

        settings = replace(DEFAULT_SETTINGS, device="cpu")
    else:
        settings = StudySettings(
            target=f"builtin:{target}",
            model="efficientnet_lite0",
            n=n,
            seed=seed,
            resolution=64,
            trials=TRIALS,
            prior="quadrant",
            device="cpu",
            schedules=("one-stage",),  # h: the one-stage search (issue 14); s searches all schedules
        )
    return replace(settings, pick=pick) if pick else settings


def repick(url: str, rule: str) -> None:
    """Let an existing study of h be picked again with ``rule``: a study keeps the pick rule it
    was created with (``tune`` resumes with its recorded settings), so the benchmark rewrites that
    one recorded field. The trials are untouched; the pick and the final retrain are redone."""
    from autotransfer.core.schema import ATTR
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import load_study, study_exists

    store = open_storage(url)
    if not study_exists(store, "h"):
        return
    study = load_study("h", store)
    stored = dict(study.user_attrs[ATTR["settings"]])
    if stored.get("pick") != rule:
        study.set_user_attr(ATTR["settings"], {**stored, "pick": rule})


class Judge:
    """Scores trained backbones on the cell's judge set (built once)."""

    def __init__(self, settings) -> None:
        from autotransfer.backbones.catalog import check_not_trained_on
        from autotransfer.data import load_dataset, unseen_subset

        # a lab source must not be judged on (or tuned on) the images it was pretrained on
        check_not_trained_on(settings.model, settings.target)
        full = load_dataset(settings.target, require_labels=True)
        self.dataset = unseen_subset(full, settings.n, settings.seed, limit=1000, judge_seed=JUDGE_SEED)
        self.settings = settings
        self._batches = None

    def __call__(self, backbone, metric: str) -> float:
        """The judge score of a backbone, or of the mean softmax of a list of them."""
        import torch

        from autotransfer.search.prepared import device_batches
        from autotransfer.train import evaluate

        first = backbone[0] if isinstance(backbone, list) else backbone
        if self._batches is None:
            self._batches = device_batches(self.dataset, self.settings, first.preprocessing, torch.device("cpu"))
        return float(evaluate(backbone, self._batches, metric))


def retrained(protocol, settings, prepared, judge) -> float:
    from autotransfer.handback.final import retrain_and_test

    backbone, _, _ = retrain_and_test(protocol, settings, prepared)
    return judge(backbone, settings.metric)


def folder_members(model_path):
    """The backbones of a model folder ``tune`` wrote: every member of an ensemble."""
    from autotransfer.backbones.model_dir import (
        build_model,
        ensemble_member_dirs,
        model_dir_preprocessing,
        read_model_config,
    )

    return [
        SimpleNamespace(model=build_model(d), preprocessing=model_dir_preprocessing(read_model_config(d)))
        for d in ensemble_member_dirs(model_path)
    ]


def search_counts(study, resolved) -> dict:
    """How the study searched: sampled trials, how many completed, pruned, pruned at the first rung."""
    import optuna

    from autotransfer.search.study import make_pruner

    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    sampled = [t for t in study.trials if "fixed_params" not in t.system_attrs]
    first = f"pruned: step {make_pruner(resolved).rungs[0]}:"
    return {
        "sampled": len(sampled),
        "sampled_complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in sampled),
        "pruned_at_first_rung": sum(1 for t in pruned if str(t.user_attrs.get("prune_reason", "")).startswith(first)),
        "pruned": len(pruned),
    }


def run_cell(
    cell: str, done: set[tuple[str, str]], log, pick: str | None = None, methods: tuple[str, ...] = METHODS
) -> None:
    from autotransfer.core.protocol import Protocol
    from autotransfer.pipeline.tune import tune
    from autotransfer.prior import linear_probe_protocol, recommended_protocol, wide_prior
    from autotransfer.search.prepared import prepare_data
    from autotransfer.search.run import build_runner, run_search
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import (
        best_by_validation,
        create_study,
        load_study,
        open_study,
        read_attr,
        read_settings,
        study_exists,
        transfer_trials,
    )

    target, n, seed = (cell.split(":") + ["0", "0"])[:3]
    settings = settings_for(target, int(n), int(seed), pick)
    OUT.mkdir(exist_ok=True)
    url = f"sqlite:///{OUT / f'judged-{target}-{n}-{seed}.db'}"
    repick(url, settings.pick)
    judge = Judge(settings)
    runs = OUT / "judged-runs"

    def record(method: str, score: float, **extra) -> None:
        row = {"cell": cell, "method": method, "judge": score, "judge_images": len(judge.dataset), **extra}
        log.write(json.dumps(row) + "\n")
        log.flush()
        done.add((cell, method))
        print(f"{cell} {method} ({NAMES[method]}): {score:.4f}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = tune(
        settings,
        study_name="h",
        storage=url,
        runs_dir=runs / cell.replace(":", "-"),
        export_dir=runs / cell.replace(":", "-"),
    )
    h_wall = time.perf_counter() - started
    store = open_storage(url)
    study = load_study("h", store)
    resolved = read_settings(study)
    prepared = prepare_data(resolved)
    if (cell, "h") not in done and "h" in methods:
        # the folder tune wrote: every member of an ensemble, scored by their mean softmax
        record(
            "h",
            judge(folder_members(result.model_path), resolved.metric),
            wall_s=round(h_wall, 1),
            val=result.val_score,
            test=result.test_score,
            pick=result.pick,
            trained_on=result.trained_on,
            **search_counts(study, resolved),
        )
    if (cell, "s") not in done and "s" in methods:
        from autotransfer.core.protocol import SCHEDULES

        t0 = time.perf_counter()
        with_schedules = tune(
            replace(settings, schedules=SCHEDULES),
            study_name="s",
            storage=url,
            runs_dir=runs / f"{cell.replace(':', '-')}-s",
            export_dir=runs / f"{cell.replace(':', '-')}-s",
        )
        s_study = load_study("s", store)
        record(
            "s",
            judge(folder_members(with_schedules.model_path), resolved.metric),
            wall_s=round(time.perf_counter() - t0, 1),
            val=with_schedules.val_score,
            test=with_schedules.test_score,
            pick=with_schedules.pick,
            schedules=sorted_schedules(s_study),
            **search_counts(s_study, read_settings(s_study)),
        )
    if target == "demo":  # the demo's claim: better than its own linear-probe control on unseen images
        if (cell, "c") not in done:
            probes = [t for t in study.trials if t.user_attrs.get("control") == "probe" and t.value is not None]
            best_probe = max(probes, key=lambda t: t.value)
            record("c", retrained(Protocol.from_dict(best_probe.params), resolved, prepared, judge), control=True)
        return
    for method, schedule in RESCHEDULED.items():
        if (cell, method) not in done and method in methods:
            from autotransfer.handback.final import retrain_and_test
            from autotransfer.prior.quadrant import GRADUAL_STAGE, LPFT_STAGE

            stage = LPFT_STAGE if schedule == "lp-ft" else GRADUAL_STAGE
            members = [int(m) for m in (read_attr(study, "pick") or {}).get("members") or []]
            trials = {t.number: t for t in study.trials}
            protocols = [
                replace(Protocol.from_dict(trials[m].params), schedule=schedule, stage_frac=stage) for m in members
            ]
            backbones = [retrain_and_test(p, resolved, prepared)[0] for p in protocols]
            record(method, judge(backbones, resolved.metric), members=members, schedule=schedule, stage_frac=stage)
    for method in ("t", "u"):
        if (cell, method) not in done and method in methods:
            record(method, **self_trained(cell, settings, url, store, runs, judge, resolved.metric, method))
    if not set(methods) & {*METHODS[1:], "x", *REPICKED}:
        return
    fixed = {
        "a": Protocol(log10_elr=math.log10(0.001 / 0.1), momentum=0.9, head_lr_mult=1.0, weight_decay=0.0),
        "b": recommended_protocol(),
        "c": linear_probe_protocol(),
        "f": Protocol.from_dict(read_attr(study, "prior")["centre"]),
    }
    for method, protocol in fixed.items():
        if (cell, method) not in done and method in methods:
            record(method, retrained(protocol, resolved, prepared, judge))
    if (cell, "d") not in done and "d" in methods:
        t0 = time.perf_counter()
        plain = replace(resolved, prune=False, prior="none")
        if not study_exists(store, "d"):
            create_study("d", store, plain, profile=None, prior=None, space=wide_prior())
        tpe = open_study("d", store, plain)
        run_search(tpe, build_runner(tpe, plain, prepared), TRIALS)
        best = best_by_validation(tpe)
        record(
            "d",
            retrained(Protocol.from_dict(best.params), resolved, prepared, judge),
            wall_s=round(time.perf_counter() - t0, 1),
            val=best.value,
        )
    if (cell, "x") not in done and "x" in methods and study_exists(store, "s"):
        tried = transfer_trials(load_study("s", store))
        scores = {t.number: retrained(Protocol.from_dict(t.params), resolved, prepared, judge) for t in tried}
        best_trial = max(scores, key=scores.get)
        record("x", scores[best_trial], trial=best_trial, per_trial=scores)
    for method, name in REPICKED.items():
        if (cell, method) not in done and method in methods and study_exists(store, name):
            record(method, **repicked(cell, load_study(name, store), name, resolved, prepared, judge, log.name))
    if (cell, "e") not in done and "e" in methods:
        scores = {
            t.number: retrained(Protocol.from_dict(t.params), resolved, prepared, judge) for t in transfer_trials(study)
        }
        best_trial = max(scores, key=scores.get)
        record("e", scores[best_trial], trial=best_trial, per_trial=scores)


def repicked(cell: str, study, name: str, resolved, prepared, judge, results: str) -> dict:
    """Methods k and m: ``study`` (s's or h's) re-picked by ``pick_candidates`` as the code picks
    now; its members retrained on train+val and judged as an ensemble. When they are the members
    the study recorded, the recorded score of ``name`` is the same retrains: it is reused."""
    from autotransfer.core.protocol import Protocol
    from autotransfer.handback.pick import pick_candidates
    from autotransfer.search.study import read_attr

    members = [t.number for t in pick_candidates(study)]
    pick = read_attr(study, "pick") or {}
    recorded = [int(m) for m in pick.get("members") or []]
    if sorted(members) == sorted(recorded):
        # the row of the rule that recorded these members (h has rows of other rules too)
        rows = [r for r in load_rows(Path(results)) if r["cell"] == cell and r["method"] == name]
        score = [r["judge"] for r in rows if pick_rule(r) == pick["rule"]][-1]
        return {"score": score, "members": members, "same_members": True}
    from autotransfer.handback.final import retrain_and_test

    trials = {t.number: t for t in study.trials}
    backbones = [retrain_and_test(Protocol.from_dict(trials[m].params), resolved, prepared)[0] for m in members]
    return {"score": judge(backbones, resolved.metric), "members": members, "recorded_members": recorded}


def self_trained(cell: str, settings, url: str, store, runs: Path, judge, metric: str, method: str = "t") -> dict:
    """Method t: a copy of h's study, resumed with ``UNLABELLED`` images of the target's pool
    outside the subsample and the judge set; the copy keeps h's own model untouched. Method u:
    the same with the students always kept (what self-training itself does on unseen images,
    apart from the decision)."""
    import optuna

    from autotransfer.data import load_dataset, unlabelled_pool
    from autotransfer.handback import self_training
    from autotransfer.pipeline.tune import tune
    from autotransfer.search.study import study_exists

    # t's studies before DECISION_SEED_OFFSET are named "t": a resume would keep their outcome
    name = "t1" if method == "t" else method
    if not study_exists(store, name):
        optuna.copy_study(from_study_name="h", from_storage=url, to_storage=url, to_study_name=name)
    full = load_dataset(settings.target, require_labels=True)
    pool = unlabelled_pool(full, settings.n, settings.seed, UNLABELLED, limit=1000, judge_seed=JUDGE_SEED)
    t0 = time.perf_counter()
    decide = self_training.keep_student
    if method == "u":
        self_training.keep_student = lambda student, teacher: True  # type: ignore[assignment]
    try:
        result = tune(
            settings,
            study_name=name,
            storage=url,
            runs_dir=runs / f"{cell.replace(':', '-')}-{name}",
            export_dir=runs / f"{cell.replace(':', '-')}-{name}",
            unlabelled=pool,
        )
    finally:
        self_training.keep_student = decide
    record = dict(result.self_training or {})
    return {
        "score": judge(folder_members(result.model_path), metric),
        "wall_s": round(time.perf_counter() - t0, 1),
        "val": result.val_score,
        "test": result.test_score,
        "self_training": {
            k: record.get(k)
            for k in (
                "kept",
                "teacher_val",
                "student_val",
                "offered",
                "kept_images",
                "trainings",
                "seconds",
                "threshold",
                "decision_seed",
                "members_trial_val",
            )
        },
    }


def sorted_schedules(study) -> dict:
    """How often each schedule was tried, and which ones the members of the pick use."""
    import optuna

    from autotransfer.core.protocol import Protocol

    tried: dict[str, int] = {}
    complete: dict[str, int] = {}
    for t in study.trials:
        if "fixed_params" in t.system_attrs or not t.params:
            continue
        name = Protocol.from_dict(t.params).schedule
        tried[name] = tried.get(name, 0) + 1
        if t.state == optuna.trial.TrialState.COMPLETE:
            complete[name] = complete.get(name, 0) + 1
    return {"sampled": tried, "complete": complete}


def schedule_report(cells: list[str]) -> str:
    """Per cell with an s study: the schedules its sampled trials drew, how many of each completed,
    their best validation score, and the schedules of the handed-back members; and the summed
    trial time of the s and h studies (the search's cost; both ran beside other benchmark
    processes on 2 cores)."""
    import optuna

    from autotransfer.core.protocol import SCHEDULES, Protocol
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import load_study, read_attr, study_exists

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lines = [
        "| cell | sampled (one-stage / lp-ft / gradual) | completed | best val per schedule |"
        " members' schedules | trial time s: s / h |",
        "|---|---|---|---|---|---|",
    ]
    for cell in cells:
        target, n, seed = cell.split(":")
        path = OUT / f"judged-{target}-{n}-{seed}.db"
        if not path.exists():
            continue
        store = open_storage(f"sqlite:///{path}")
        if not study_exists(store, "s"):
            continue
        study = load_study("s", store)
        by_number = {t.number: t for t in study.trials}
        drawn = {k: 0 for k in SCHEDULES}
        complete = {k: 0 for k in SCHEDULES}
        best: dict[str, float] = {}
        for t in study.trials:
            if not t.params:
                continue
            name = Protocol.from_dict(t.params).schedule
            if "fixed_params" not in t.system_attrs:
                drawn[name] += 1
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
                complete[name] += 1
                best[name] = max(best.get(name, 0.0), float(t.value))
        members = (read_attr(study, "pick") or {}).get("members") or []
        member_schedules = [Protocol.from_dict(by_number[int(m)].params).schedule for m in members]

        def busy(s) -> float:
            return sum(
                (t.datetime_complete - t.datetime_start).total_seconds()
                for t in s.trials
                if t.datetime_complete and t.datetime_start
            )

        h_time = busy(load_study("h", store)) if study_exists(store, "h") else float("nan")
        lines.append(
            f"| {cell} | {' / '.join(str(drawn[k]) for k in SCHEDULES)} |"
            f" {' / '.join(str(complete[k]) for k in SCHEDULES)} |"
            f" {', '.join(f'{k} {v:.3f}' for k, v in best.items())} | {', '.join(member_schedules)} |"
            f" {busy(study):.0f} / {h_time:.0f} |"
        )
    return "\n".join(lines)


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pick_rule(row: dict) -> str:
    """The pick rule of an h row (rows written before the rule was recorded used ``cv``)."""
    return str((row.get("pick") or {}).get("rule", "cv"))


def current_rows(rows: list[dict], rule: str) -> list[dict]:
    """The rows that count for pick rule ``rule``: every row but h rows of another rule, and t rows
    of the first self-training decision (teachers re-run with the study's seed, before
    ``DECISION_SEED_OFFSET``; kept in the file as history)."""
    return [
        r
        for r in rows
        if (r["method"] != "h" or pick_rule(r) == rule)
        and (r["method"] != "t" or "decision_seed" in (r.get("self_training") or {}))
    ]


def summary(rows: list[dict]) -> str:
    """Paired differences h - x over cells, with 95% t-intervals; per (target, N) means."""
    import numpy as np
    from scipy import stats

    by = {(r["cell"], r["method"]): r for r in rows}
    cells = sorted({r["cell"] for r in rows if r["cell"] != "demo"})
    shown = METHODS + tuple(m for m in EXTRA if any(r["method"] == m for r in rows))
    lines = [
        "| target, N | " + " | ".join(f"{m}: {NAMES[m]}" for m in shown) + " | seeds |",
        "|---" * (len(shown) + 2) + "|",
    ]
    groups: dict[str, list[str]] = {}
    for c in cells:
        t, n, _ = c.split(":")
        groups.setdefault(f"{t}, {n}", []).append(c)
    for g, cs in groups.items():
        vals = []
        for m in shown:
            xs = [by[(c, m)]["judge"] for c in cs if (c, m) in by]
            if not xs:
                vals.append("—")
                continue
            k = by[(cs[0], m)]["judge_images"] if (cs[0], m) in by else 1000
            se = math.sqrt(np.mean(xs) * (1 - np.mean(xs)) / (k * len(xs)))
            vals.append(f"{100 * np.mean(xs):.1f} ± {100 * se:.1f}")
        lines.append(f"| {g} | " + " | ".join(vals) + f" | {len(cs)} |")
    lines += ["", "| difference | mean (points) | 95% CI | cells |", "|---|---|---|---|"]
    for m in shown[1:]:
        sign = -1.0 if m in EXTRA else 1.0  # issue 18's methods read as x - h: what they add to h
        diffs = [sign * (by[(c, "h")]["judge"] - by[(c, m)]["judge"]) for c in cells if (c, "h") in by and (c, m) in by]
        if not diffs:
            continue
        mean = 100 * float(np.mean(diffs))
        if len(diffs) > 1:
            half = 100 * float(stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / math.sqrt(len(diffs)))
            ci = f"{mean - half:+.1f} to {mean + half:+.1f}"
        else:
            ci = "—"
        label = f"{m} − h" if m in EXTRA else f"h − {m}"
        lines.append(f"| {label} ({NAMES[m]}) | {mean:+.1f} | {ci} | {len(diffs)} |")
    hs = [by[(c, "h")] for c in cells if (c, "h") in by]
    if hs:
        lines += [
            "",
            "| cell | sampled | sampled complete | pruned | pruned at first rung | pick | tune wall s | plain TPE wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in hs:
            d = by.get((r["cell"], "d"), {})
            pick = r.get("pick") or {}
            lines.append(
                f"| {r['cell']} | {r.get('sampled')} | {r.get('sampled_complete')} | {r.get('pruned')} |"
                f" {r.get('pruned_at_first_rung')} | trial {pick.get('trial')} ({pick.get('rule')}) |"
                f" {r.get('wall_s')} | {d.get('wall_s', '—')} |"
            )
    if ("demo", "h") in by and ("demo", "c") in by:
        h, c = by[("demo", "h")], by[("demo", "c")]
        lines += [
            "",
            f"demo (`autotransfer tune`, {h.get('wall_s')} s): handed back {100 * h['judge']:.1f},"
            f" linear-probe control {100 * c['judge']:.1f} on {h['judge_images']} unseen images",
        ]
    return "\n".join(lines)


def anytime_cell(cell: str, done: set, log, methods: tuple[str, ...]) -> None:
    """Issue 27's methods on ``cell`` (``anytime.run_anytime``), with this file's judge and rows."""
    from anytime import NAMES as ANYTIME_NAMES
    from anytime import run_anytime

    rows = {(r["cell"], r["method"]): r for r in load_rows(Path(log.name))}
    state: dict = {}

    def judge_for(settings):
        state["judge"] = Judge(settings)
        return state["judge"], folder_members, rows

    def record(method: str, score: float, **extra) -> None:
        row = {"cell": cell, "method": method, "judge": score, "judge_images": len(state["judge"].dataset), **extra}
        log.write(json.dumps(row) + "\n")
        log.flush()
        done.add((cell, method))
        rows[(cell, method)] = row
        print(f"{cell} {method} ({ANYTIME_NAMES[method]}): {score:.4f}", file=sys.stderr, flush=True)

    OUT.mkdir(exist_ok=True)
    run_anytime(cell, done, record, methods, OUT, judge_for)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="target:N:seed,...")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--anytime", action="store_true", help="with --summary: issue 27's anytime table")
    parser.add_argument("--as-h", default=None, help="with --summary: read this method's rows as h (s, t or u)")
    parser.add_argument(
        "--schedule-report", action="store_true", help="how the s studies used the schedules (reads the databases)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"methods to run, of {','.join(METHODS + EXTRA)} (default: issue 14's {','.join(METHODS)});"
        " h's study is always run or resumed first",
    )
    parser.add_argument(
        "--pick",
        default=None,
        help="the pick rule h uses (default: tune's default); h rows of"
        " other rules stay in the results file and are left out of the summary",
    )
    args = parser.parse_args()
    path = Path(args.results)
    if args.schedule_report:
        print(schedule_report(args.cells.split(",")))
        return
    if args.summary and args.anytime:
        from anytime import anytime_summary

        print(anytime_summary(load_rows(path)))
        return
    if args.summary:
        rows = current_rows(load_rows(path), args.pick or settings_for("demo", 0, 0).pick)
        if args.as_h:  # read another method's rows as h (e.g. s: tune as it runs now, schedules searched)
            rows = [{**r, "method": "h"} if r["method"] == args.as_h else r for r in rows if r["method"] != "h"]
            rows = [r for r in rows if r["method"] not in EXTRA]
        print(summary(rows))
        return
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rule = args.pick or settings_for("demo", 0, 0).pick
    done = {(r["cell"], r["method"]) for r in current_rows(load_rows(path), rule)}
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    from anytime import ANYTIME

    unknown = sorted(set(methods) - set(METHODS + EXTRA + ANYTIME))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {','.join(METHODS + EXTRA + ANYTIME)}")
    with path.open("a") as log:
        for cell in args.cells.split(","):
            if set(methods) & set(ANYTIME):
                anytime_cell(cell, done, log, tuple(m for m in methods if m in ANYTIME))
                methods_left = tuple(m for m in methods if m not in ANYTIME)
                if not methods_left:
                    continue
            wanted = ("h", "c") if cell == "demo" else methods
            if all((cell, m) in done for m in wanted):
                continue
            run_cell(cell, done, log, rule, methods)


if __name__ == "__main__":
    main()
