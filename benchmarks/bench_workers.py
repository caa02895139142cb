"""Scale-out throughput: trials per hour of one study on 1 worker against N workers, one machine.

The same study settings and the same K protocols (drawn once with a seeded random sampler from
a moderate range and enqueued, so every configuration trains exactly the same trials) run on
``1 worker x C threads`` and on ``N workers x C // N threads`` (``C`` = ``--cores``; CPU here),
through one SQLite storage per run, with real ``autotransfer worker`` processes started by
``launch_local_workers``.

- trials/h (steady): K / (last trial's end - first trial's start), from the trials' own
  timestamps: the search itself, without the workers' start-up.
- trials/h (wall): K / (time from launching the workers to the last one's exit), start-up
  (imports, data preparation) included; it matters for short studies only.

On a GPU machine, ``--device cuda`` gives each worker one GPU (``CUDA_VISIBLE_DEVICES``).
On a shared machine the neighbours' load enters every number: the 1-minute load average is
printed before and after each run, and ``--repeats R`` alternates the configurations.

Usage::

    python benchmarks/bench_workers.py                          # CPU, 2 cores, ~5 minutes
    python benchmarks/bench_workers.py --workers 1,2 --trials 8 --json out.json
    python benchmarks/bench_workers.py --device cuda --workers 1,4 --trials 32 --resolution 64 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import optuna

from autotransfer.core.protocol import ParamRange, ProtocolSpace
from autotransfer.core.schema import SOURCE_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.search.prepared import prepare_data
from autotransfer.search.storage import open_storage
from autotransfer.search.study import create_study, search_trials
from autotransfer.search.workers import available_cores, launch_local_workers, wait_workers

__all__ = ["main", "bench_protocols", "run_config"]


def bench_protocols(k: int, seed: int = 0) -> list:
    """``k`` protocols from a moderate range (no divergence at these budgets), seeded."""
    space = ProtocolSpace()
    space.ranges.update(
        log10_elr=ParamRange(-2.3, -1.0),
        momentum=ParamRange(0.8, 0.95),
        head_lr_mult=ParamRange(3.0, 30.0, log=True),
        l2sp=ParamRange(0.0, 0.0),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(draw.ask()) for _ in range(k)]


def _settings(args) -> StudySettings:
    return StudySettings(
        target=args.target,
        model=args.model,
        n=args.n,
        resolution=args.resolution,
        batch_size=args.batch_size,
        steps=args.steps,
        eval_every=args.steps // 2,
        views=2,
        trials=args.trials,
        prune=False,
        device=args.device,
    )


def _load() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def run_config(args, n_workers: int, workdir: Path, tag: str, spare: int = 0) -> dict:
    """One study of ``args.trials`` trials on ``n_workers`` local workers.

    ``args.trials + spare`` protocols are enqueued, so that the trials that concurrent workers
    start after the budget is met (up to N - 1) are drawn from the same list, not by TPE.
    """
    url = f"sqlite:///{workdir / f'{tag}.db'}"
    settings = _settings(args)
    prepared = prepare_data(settings)
    settings = settings.resolved(
        fingerprint=prepared.fingerprint,
        metric="accuracy",
        num_classes=len(prepared.dataset.classes),
        n_train=len(prepared.train),
    )
    protocols = bench_protocols(args.trials + spare, args.seed)
    queued = [(p, {SOURCE_ATTR: f"bench#{i}"}) for i, p in enumerate(protocols)]
    create_study(tag, open_storage(url), settings, profile=None, prior=None, space=ProtocolSpace(), enqueue=queued)
    threads = max(1, args.cores // n_workers)
    load_before = _load()
    started = time.perf_counter()
    procs = launch_local_workers(
        tag, url, n_workers, device=args.device, threads=threads, log_dir=workdir / f"{tag}-logs"
    )
    codes = wait_workers(procs, timeout=args.max_seconds)
    wall = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"workers exited {codes}: see {workdir / f'{tag}-logs'}")
    study = optuna.load_study(study_name=tag, storage=open_storage(url, heartbeat=False))
    done = search_trials(study)
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    steady = (last - first).total_seconds()
    per_trial = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return {
        "workers": n_workers,
        "threads_per_worker": threads,
        "device": args.device,
        "trials": len(done),
        "steady_s": round(steady, 1),
        "wall_s": round(wall, 1),
        "trials_per_hour_steady": round(3600 * len(done) / steady, 1),
        "trials_per_hour_wall": round(3600 * len(done) / wall, 1),
        "mean_trial_s": round(sum(per_trial) / len(per_trial), 2),
        "mean_val_score": round(sum(t.value for t in done) / len(done), 4),
        "load_before": load_before,
        "load_after": _load(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    parser.add_argument("--cores", type=int, default=available_cores(), help="CPU cores split between workers")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--target", default="builtin:fashion-mnist?classes=5-9")
    parser.add_argument("--model", default="fashion-source")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    counts = [int(c) for c in args.workers.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for r in range(args.repeats):
            for n in counts:
                result = run_config(args, n, Path(tmp), f"bench-w{n}-r{r}", spare=max(counts) - 1)
                runs.append(result)
                print(
                    f"{n} worker(s) x {result['threads_per_worker']} thread(s): {result['trials']} trials,"
                    f" {result['trials_per_hour_steady']:.0f} trials/h steady ({result['steady_s']} s),"
                    f" {result['trials_per_hour_wall']:.0f} trials/h wall ({result['wall_s']} s),"
                    f" mean trial {result['mean_trial_s']} s, load {result['load_before']}->{result['load_after']}",
                    flush=True,
                )
    best = {n: max(r["trials_per_hour_steady"] for r in runs if r["workers"] == n) for n in counts}
    best_wall = {n: max(r["trials_per_hour_wall"] for r in runs if r["workers"] == n) for n in counts}
    base = counts[0]
    for n in counts[1:]:
        print(
            f"ratio {n} workers / {base}: {best[n] / best[base]:.2f}x steady,"
            f" {best_wall[n] / best_wall[base]:.2f}x wall (best of {args.repeats})"
        )
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cores": available_cores(),
            "cpu_count": os.cpu_count(),
        },
        "args": vars(args),
        "runs": runs,
        "best_trials_per_hour_steady": best,
        "best_trials_per_hour_wall": best_wall,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
