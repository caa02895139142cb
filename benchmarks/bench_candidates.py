"""Cost of scoring every candidate model against one training of the cheapest (issue 29, "Cost").

For each target (default: builtin:animals, builtin:elpv, builtin:mnist5k), on a stratified
subsample of ``--n`` images (default 200), in one process on ``--threads`` threads:

1. ``estimate.candidates.score_candidates`` over the offline zoo (``backbones.offline_zoo``:
   efficientnet_lite0/1/2 and the laboratory sources), the training speed at the study's CPU
   defaults (``--resolution`` 64 px, batch 32): its wall time, every model created from disk,
   features at each model's native size on all ``--n`` images;
2. then one training of the cheapest candidate (the most training images per second) the way a
   study's trial runs it: the default ``Protocol()`` (full fine-tune, one stage) through
   ``search.objective.train_config_for``, the default budget (``core.settings.default_steps`` of
   the 70% train split, validation on the 15% val split every ``steps // 6`` steps, as
   ``StudySettings.resolved``), model creation and resizing included.

The issue's goal: (1) costs less than (2). It also prints each candidate's scores (NLEEP, LogME
over chance, LEEP, H-score, similarity, parameters, img/s), to rank later against fine-tuned
accuracy, the seconds of each candidate's feature pass and speed probe, and the JSON of
everything with ``--json``. ``--feature-size 64`` takes the estimator's features at 64 px (the
study's resolution) instead of each model's native 224-260 px (``TaskEstimator(input_size=)``).

    OMP_NUM_THREADS=1 python benchmarks/bench_candidates.py [--threads 1] [--json /tmp/candidates.json]
    OMP_NUM_THREADS=1 python benchmarks/bench_candidates.py --feature-size 64
    OMP_NUM_THREADS=1 python benchmarks/bench_candidates.py --targets builtin:mnist5k --feature-size native,64
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from autotransfer.backbones import create_backbone, offline_zoo
from autotransfer.core.protocol import Protocol
from autotransfer.core.settings import StudySettings, default_steps
from autotransfer.data import load_dataset, stratified_split, stratified_subsample, to_array
from autotransfer.data.device import DeviceBatches
from autotransfer.estimate.candidates import score_candidates
from autotransfer.search.objective import train_config_for
from autotransfer.train.loop import train_protocol

TARGETS = ("builtin:animals", "builtin:elpv", "builtin:mnist5k")


def _batches(split, backbone, resolution: int, flip: bool) -> DeviceBatches:
    return DeviceBatches(
        to_array(split, resolution),
        split.labels,
        device="cpu",
        out_size=resolution,
        mean=backbone.preprocessing.mean,
        std=backbone.preprocessing.std,
        flip=flip,
        channels_last=True,
    )


def one_training(dataset, model: str, resolution: int, batch_size: int, seed: int) -> dict:
    """One default-protocol training of ``model`` at the default budget; wall time and val score."""
    tick = time.perf_counter()
    splits = stratified_split(dataset, 0.15, 0.15, seed=seed)
    backbone = create_backbone(model, num_classes=len(dataset.classes))
    steps = default_steps(len(splits.train), batch_size)
    settings = StudySettings(resolution=resolution, batch_size=batch_size, steps=steps, eval_every=max(1, steps // 6))
    config = train_config_for(Protocol(), settings, backbone.num_groups)
    train = _batches(splits.train, backbone, resolution, flip=True)
    val = _batches(splits.val, backbone, resolution, flip=False)
    result = train_protocol(backbone, train, val, config)
    return {
        "model": model,
        "steps": steps,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "seconds": time.perf_counter() - tick,
        "val_accuracy": result.final_score,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--feature-size", default="native", help="native, or the px of the estimator's features; a comma list runs each"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo = offline_zoo()
    sizes = [None if s.strip() == "native" else int(s) for s in args.feature_size.split(",")]
    print(
        f"# candidates: {', '.join(zoo)}; N = {args.n}, {args.resolution} px, batch {args.batch_size}, "
        f"features at {args.feature_size} px, {args.threads} thread(s), {platform.processor() or platform.machine()}, torch {torch.__version__}\n"
    )
    records = []
    for spec in args.targets.split(","):
        dataset = stratified_subsample(load_dataset(spec), args.n, seed=args.seed)
        runs = []
        for feature_size in sizes:
            runs.append(
                score_candidates(
                    dataset,
                    zoo,
                    resolution=args.resolution,
                    batch_size=args.batch_size,
                    max_images=args.n,
                    seed=args.seed,
                    feature_size=feature_size,
                )
            )
        cheapest = max(runs[0].candidates, key=lambda c: c.images_per_s)
        training = one_training(dataset, cheapest.model, args.resolution, args.batch_size, args.seed)
        for scored in runs:
            size = "native" if scored.feature_size is None else f"{scored.feature_size} px"
            records.append({"target": spec, "features": size, "candidates": scored.to_dict(), "training": training})
            print(
                f"## {spec} (N = {scored.images}, {scored.classes} classes), features at {size}: estimate all "
                f"{len(zoo)} candidates {scored.seconds:.1f} s vs one training of the cheapest ({cheapest.model}, "
                f"{training['steps']} steps on {training['n_train']} images) {training['seconds']:.1f} s: "
                f"ratio {scored.seconds / training['seconds']:.2f}\n"
            )
            print(
                "| model | NLEEP | LogME over chance | LEEP | H-score | similarity | params | train img/s "
                "| estimate s | features + resize s | speed probe s | kept |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for c in scored.candidates:
                leep = "-" if c.leep is None else f"{c.leep:.3f}"
                kept = "yes" if c.kept else f"no ({c.reason})"
                print(
                    f"| {c.model} | {c.nleep:.3f} | {c.logme_over_chance:.3f} | {leep} | {c.hscore:.2f} | "
                    f"{c.similarity:.3f} | {c.params / 1e6:.2f}M | {c.images_per_s:.0f} | {c.estimate_s:.1f} | "
                    f"{c.timings.get('features', 0.0) + c.timings.get('resize', 0.0):.1f} | "
                    f"{c.timings.get('speed probe', 0.0):.1f} | {kept} |"
                )
            print()
    print("| target | features | estimate all (s) | one training of the cheapest (s) | ratio | cheapest |")
    print("|---|---|---|---|---|---|")
    for r in records:
        est, tr = r["candidates"]["seconds"], r["training"]["seconds"]
        print(f"| {r['target']} | {r['features']} | {est:.1f} | {tr:.1f} | {est / tr:.2f} | {r['training']['model']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
