"""Does a closer source win (issue 29)? One short fine-tune per (near target, source), judged on unseen images.

For the near target of each new laboratory source (``builtin:mnist5k?classes=5-9`` for
``digit-source``, ``builtin:animals?classes=5-9`` for ``silhouette-source``) at N = 200 (seed 0),
fine-tune each source with the survey's recommended protocol (``recommended_protocol``: all groups,
ELR 0.03, as bench_judged's method b) at the study's default budget, on the subsample's train+val
split, exactly as ``retrain_and_test`` trains a final model; then score it on the judge set: up to
1,000 images of the target's pool outside the subsample (``unseen_subset``, judge seed 12345, as
bench_judged), which lie in classes 5-9 and so outside every lab source's training images
(``check_not_trained_on`` refuses the row otherwise).

Sources: the near lab source, the other lab sources (fashion-source and the far one) at 32 px, and
efficientnet_lite0 (ImageNet) at 32 and 64 px. Prints a table (stderr: progress) and writes one
JSON line per row to ``--out``.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_lab_sources.py [--seeds 0] [--out benchmarks/out/lab_sources.jsonl]
    python benchmarks/bench_lab_sources.py --summary benchmarks/out/lab_sources*.jsonl   # mean over seeds
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

TARGETS = {"digit-source": "builtin:mnist5k?classes=5-9", "silhouette-source": "builtin:animals?classes=5-9"}
#: (model, resolution) rows per target; the near source is the target's own key in TARGETS
ROWS = [
    ("digit-source", 32),
    ("silhouette-source", 32),
    ("fashion-source", 32),
    ("efficientnet_lite0", 32),
    ("efficientnet_lite0", 64),
]
N = 200
JUDGE_SEED = 12345


def run_row(target: str, model: str, resolution: int, seed: int) -> dict:
    """Fine-tune ``model`` on ``target``'s subsample with the recommended protocol; judge it."""
    import torch

    from autotransfer.backbones.catalog import check_not_trained_on
    from autotransfer.core.settings import StudySettings
    from autotransfer.data import load_dataset, unseen_subset
    from autotransfer.estimate.size import size_stats
    from autotransfer.handback.final import retrain_and_test
    from autotransfer.prior import recommended_protocol
    from autotransfer.search.prepared import device_batches, prepare_data
    from autotransfer.search.run import validation_counts
    from autotransfer.train import evaluate

    check_not_trained_on(model, target)
    settings = StudySettings(target=target, model=model, n=N, seed=seed, resolution=resolution, device="cpu")
    prepared = prepare_data(settings)
    metric = size_stats(prepared.trainval).metric
    resolved = settings.resolved(
        fingerprint=prepared.fingerprint,
        metric=metric,
        num_classes=len(prepared.dataset.classes),
        n_train=len(prepared.train),
        **validation_counts(prepared, metric),
    )
    judge_set = unseen_subset(load_dataset(target), N, seed, limit=1000, judge_seed=JUDGE_SEED)
    start, cpu = time.perf_counter(), time.process_time()
    backbone, test, _ = retrain_and_test(recommended_protocol(), resolved, prepared)
    batches = device_batches(judge_set, resolved, backbone.preprocessing, torch.device("cpu"))
    score = float(evaluate(backbone, batches, metric))
    return {
        "target": target,
        "model": model,
        "resolution": resolution,
        "seed": seed,
        "n": N,
        "metric": metric,
        "steps": resolved.steps,
        "judge": round(score, 4),
        "judge_images": len(judge_set),
        "test": round(float(test), 4),
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }


def summary(paths: list[Path]) -> list[dict]:
    """Mean judge accuracy per (target, model, resolution) over the seeds in JSONL ``paths``, with
    the per-seed scores and the binomial standard error of one seed's judge set."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            groups.setdefault((row["target"], row["model"], row["resolution"]), []).append(row)
    out = []
    for (target, model, resolution), rows in groups.items():
        rows = sorted({r["seed"]: r for r in rows}.values(), key=lambda r: r["seed"])  # last run per seed
        scores = np.array([r["judge"] for r in rows])
        mean = float(scores.mean())
        out.append(
            {
                "target": target,
                "model": model,
                "resolution": resolution,
                "near": rows[0]["near"],
                "seeds": [r["seed"] for r in rows],
                "judge": [r["judge"] for r in rows],
                "mean": round(mean, 4),
                "se_one_seed": round(math.sqrt(mean * (1 - mean) / rows[0]["judge_images"]), 4),
                "cpu_s": round(float(np.mean([r["cpu_s"] for r in rows])), 1),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated subsample seeds")
    parser.add_argument("--sources", default=",".join(TARGETS), help="near sources whose targets to run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "lab_sources.jsonl")
    parser.add_argument("--summary", type=Path, nargs="+", help="print the mean over seeds of these JSONL files")
    args = parser.parse_args(argv)
    if args.summary:
        print("| target | source | px | judge acc, mean over seeds | per seed | SE (1 seed) | CPU s |")
        print("|---|---|---|---|---|---|---|")
        for r in summary(args.summary):
            name = f"**{r['model']}** (near)" if r["near"] else r["model"]
            print(
                f"| {r['target']} | {name} | {r['resolution']} | {r['mean']:.4f} | "
                f"{', '.join(f'{v:.3f}' for v in r['judge'])} | {r['se_one_seed']:.4f} | {r['cpu_s']:.0f} |"
            )
        return
    import torch

    torch.set_num_threads(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    with args.out.open("a") as log:
        for near in args.sources.split(","):
            target = TARGETS[near]
            for seed in (int(s) for s in args.seeds.split(",")):
                for model, resolution in ROWS:
                    row = {**run_row(target, model, resolution, seed), "near": model == near}
                    rows.append(row)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    print(
                        f"{target} {model}@{resolution} seed {seed}: judge {row['judge']:.4f} "
                        f"({row['cpu_s']:.0f} s CPU)",
                        file=sys.stderr,
                        flush=True,
                    )
    print("| target | source | px | judge acc (n) | test | steps | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name = f"**{r['model']}** (near)" if r["near"] else r["model"]
        print(
            f"| {r['target']} | {name} | {r['resolution']} | {r['judge']:.4f} ({r['judge_images']}) | "
            f"{r['test']:.4f} | {r['steps']} | {r['cpu_s']:.0f} |"
        )
    print(f"total wall {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
