"""One deliverable network vs the ensemble it comes from (issue 28), judged on images no trial saw.

For each cell (``target:N:seed``, as bench_judged's) a ``tune`` job as a user runs it by default
(``time_budget="auto"``, the ensemble pick) hands back its members; or, with ``--reuse``, the
members of a job bench_judged's anytime methods already ran for that cell (its study and folder in
``out/``). From those members (each with its test-split score), every way of folding them into
one network is derived, timed, and judged on the cell's judge set (up to 1,000 images outside the
study's subsample):

- ``ensemble``: the members' mean softmax (what ``--deliver ensemble`` hands back);
- ``best_member``: the member with the best judge score (an oracle: no pick can know it);
- ``first_member``: the pick's first member (what timm loaded before issue 28);
- ``distilled``, ``soup``: ``handback.deliver``'s two single networks.

Resumable: one JSON row per (cell, job) appended to ``deliver.jsonl``. ``--summary`` prints the
paired differences with 95% t-intervals over cells:

    OMP_NUM_THREADS=1 python benchmarks/bench_deliver.py --cells animals:200:0 --reuse z,q1
    OMP_NUM_THREADS=1 python benchmarks/bench_deliver.py --cells mnist5k:200:0,elpv:200:1
    python benchmarks/bench_deliver.py --summary
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))

OUT = Path(__file__).parent / "out"
RESULTS = Path(__file__).parent / "deliver.jsonl"
KINDS = ("distilled", "soup")


def tuned_job(cell: str) -> tuple[str, str, Path]:
    """Run the default ``tune`` job on ``cell`` (resuming a cut-short one); its (url, study, folder)."""
    from anytime import anytime_settings

    from autotransfer.pipeline.tune import tune

    target, n, seed = cell.split(":")
    url = f"sqlite:///{OUT / f'deliver-{target}-{n}-{seed}.db'}"
    runs = OUT / "deliver-runs" / cell.replace(":", "-")
    result = tune(
        anytime_settings(target, int(n), int(seed)),
        study_name="default",
        storage=url,
        runs_dir=runs,
        export_dir=runs,
        time_budget="auto",
    )
    return url, "default", Path(result.model_path)


def reused_job(cell: str, job: str) -> tuple[str, str, Path]:
    """The (url, study, folder) of bench_judged's anytime method ``job`` on ``cell``."""
    target, n, seed = cell.split(":")
    url = f"sqlite:///{OUT / f'anytime-{target}-{n}-{seed}.db'}"
    return url, job, OUT / "anytime-runs" / cell.replace(":", "-") / job / job


def members_of(url: str, study_name: str, folder: Path):
    """``(settings, prepared, members, ensemble)``: the job's study settings and data, its
    members (``handback.final.Member``) and their networks as a ``FinalEnsemble``, each scored on
    the test split."""
    from safetensors.torch import load_file

    from autotransfer.backbones import create_backbone
    from autotransfer.backbones.model_dir import ensemble_member_dirs
    from autotransfer.core.protocol import Protocol
    from autotransfer.core.schema import FREEZE_ATTR, REINIT_ATTR
    from autotransfer.handback.final import FinalEnsemble, FinalModel, Member, ensemble_test_score
    from autotransfer.search.prepared import prepare_data, split_batches
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import load_study, read_attr, read_settings
    from autotransfer.train import evaluate

    study = load_study(study_name, open_storage(url))
    settings = read_settings(study)
    prepared = prepare_data(settings)
    numbers = [int(m) for m in (read_attr(study, "final") or {}).get("members") or []]
    trials = {t.number: t for t in study.trials}
    dirs = ensemble_member_dirs(folder)
    if len(dirs) != len(numbers):
        raise SystemExit(f"{folder}: {len(dirs)} member folders but the study records members {numbers}")
    members, finals = [], []
    for number, member_dir in zip(numbers, dirs):
        trial = trials[number]
        depths = (int(trial.user_attrs.get(FREEZE_ATTR, 0)), int(trial.user_attrs.get(REINIT_ATTR, 0)))
        members.append(
            Member(number, Protocol.from_dict(trial.params), float(trial.value), 0, float(trial.value), depths)
        )
        backbone = create_backbone(settings.model, num_classes=settings.num_classes)
        backbone.model.load_state_dict(load_file(str(member_dir / "model.safetensors")))
        backbone.model.eval()
        test = split_batches(prepared, "test", settings, backbone.preprocessing)
        finals.append(FinalModel(backbone, float(evaluate(backbone, test, settings.metric)), None, "train+val", 0.0))
        finals[-1].trial = number
    score = (
        finals[0].test_score
        if len(finals) == 1
        else ensemble_test_score([f.backbone for f in finals], settings, prepared)
    )
    return settings, prepared, members, FinalEnsemble(finals, score)


def run(cell: str, job: str, done: set, log) -> None:
    from bench_judged import Judge

    from autotransfer.handback.deliver import deliver

    if (cell, job) in done:
        return
    t0 = time.perf_counter()
    url, study_name, folder = tuned_job(cell) if job == "default" else reused_job(cell, job)
    tune_s = time.perf_counter() - t0 if job == "default" else None
    settings, prepared, members, ensemble = members_of(url, study_name, folder)
    if len(members) < 2:
        print(f"{cell} {job}: one member, nothing to fold", file=sys.stderr)
        return
    judge = Judge(settings)
    metric = settings.metric
    backbones = [m.backbone for m in ensemble.members]
    member_judge = [judge(b, metric) for b in backbones]
    row = {
        "cell": cell,
        "job": job,
        "members": [m.trial for m in members],
        "member_freeze_reinit": [list(m.freeze_reinit or ()) for m in members],
        "member_test": [m.test_score for m in ensemble.members],
        "member_judge": member_judge,
        "ensemble": judge(backbones, metric),
        "ensemble_test": ensemble.test_score,
        "best_member": max(member_judge),
        "first_member": member_judge[0],
        "judge_images": len(judge.dataset),
        "tune_s": tune_s,
    }
    for kind in KINDS:
        delivered = deliver(kind, ensemble, members, settings, prepared)
        row[kind] = judge(delivered.model.backbone, metric)
        row[f"{kind}_test"] = delivered.test_score
        row[f"{kind}_s"] = round(delivered.seconds, 1)
        row[f"{kind}_how"] = delivered.how
        print(f"{cell} {job} {kind}: judge {row[kind]:.4f} ({delivered.seconds:.0f} s)", file=sys.stderr, flush=True)
    log.write(json.dumps(row) + "\n")
    log.flush()
    done.add((cell, job))
    print(
        f"{cell} {job}: ensemble {row['ensemble']:.4f}, best member {row['best_member']:.4f},"
        f" distilled {row['distilled']:.4f}, soup {row['soup']:.4f}",
        file=sys.stderr,
        flush=True,
    )


def _interval(diffs: list[float]) -> str:
    from scipy import stats

    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return f"{100 * mean:+.1f} (n=1)"
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}] (n={n})"


def summary(rows: list[dict]) -> str:
    """Per row the judge scores; then each single network minus the ensemble and minus the best
    member, paired by (cell, job), in points with 95% t-intervals."""
    lines = [
        "| cell | job | ensemble | best member | first member | distilled | soup | distil s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['job']} | {100 * r['ensemble']:.1f} | {100 * r['best_member']:.1f} |"
            f" {100 * r['first_member']:.1f} | {100 * r['distilled']:.1f} | {100 * r['soup']:.1f} | {r['distilled_s']:.0f} |"
        )
    lines.append("")
    for kind in KINDS:
        for base in ("ensemble", "best_member", "first_member"):
            lines.append(f"- {kind} - {base}: {_interval([r[kind] - r[base] for r in rows])} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="", help="target:N:seed,...")
    parser.add_argument(
        "--reuse", default="", help="bench_judged anytime jobs to reuse (z, q1, q3, r3), else the default job"
    )
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    path = Path(args.results)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if args.summary:
        print(summary(rows))
        return
    done = {(r["cell"], r["job"]) for r in rows}
    OUT.mkdir(exist_ok=True)
    jobs = [j for j in args.reuse.split(",") if j] or ["default"]
    with path.open("a") as log:
        for cell in [c for c in args.cells.split(",") if c]:
            for job in jobs:
                run(cell, job, done, log)


if __name__ == "__main__":
    main()
