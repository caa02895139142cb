"""Inference cost of the handed-back model: one network against the 3-member ensemble (issue 28).

Writes two model folders of the same architecture as ``tune`` writes them
(``handback.model_card.save_tuned_ensemble``): ``single``, one network, and ``ensemble``, three
(the first as the folder, the others under ``members/2``, ``members/3``). The weights are the
source's real pretrained ones (``--model``, default ``efficientnet_lite0``) with random heads, at
``--resolution`` px: no training, since the cost of ``predict`` depends on the architecture and the
number of networks, not on what the weights learned.

Each measurement runs in a fresh process, so each peak RSS (``ru_maxrss``: the process's high-water
mark) is that folder's own: the child loads ``--n`` images of ``--data`` (default 1,000 of
``builtin:animals``), reads the RSS, loads the folder with ``autotransfer.load_model``, scores a
few images to warm up, then times ``predict_proba`` on all ``--n`` (decoded arrays: the
preprocessing at the folder's resolution is timed, reading files is not). On CUDA it also reports
``torch.cuda.max_memory_allocated``. The two folders alternate, ``--repeats`` times each, the order
flipped every round, so a slower spell of a shared machine falls on both; the table gives medians,
and the ratio single / ensemble both as the ratio of the medians and as the median of each round's
ratio (the paired one: robust to the machine's load drifting between rounds).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_inference.py --device cpu
    .venv/bin/python benchmarks/bench_inference.py --device cuda --n 5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_folders(root: Path, model: str, resolution: int, data: str) -> dict[str, Path]:
    """``single`` and ``ensemble`` (3 members) model folders under ``root``; returns their paths."""
    import torch

    from autotransfer.backbones import create_backbone
    from autotransfer.core.protocol import Protocol
    from autotransfer.core.settings import StudySettings
    from autotransfer.data import load_dataset
    from autotransfer.handback.model_card import save_tuned_ensemble

    classes = [str(c) for c in load_dataset(data).classes]
    settings = StudySettings(target=data, model=model, resolution=resolution, device="cpu")
    members = []
    for i in range(3):
        torch.manual_seed(i)
        backbone = create_backbone(model, num_classes=len(classes))
        with torch.no_grad():
            backbone.model.get_submodule(backbone.head_name).weight.normal_(0, 0.05)
        members.append((backbone, Protocol(), {"trial": i, "val_score": None, "test_score": 0.0}))
    out = {}
    for name, chosen in (("single", members[:1]), ("ensemble", members)):
        out[name] = save_tuned_ensemble(
            chosen, root / name, settings, classes=classes, test_score=0.0, test_images=1, versions={}
        )
    return out


def child(folder: str, data: str, n: int, device: str, threads: int) -> None:
    """One measurement in this process: print a JSON line of images/s and memory."""
    import numpy as np
    import timm  # noqa: F401 - imported before the baseline, so "load s" is the folder's own
    import torch

    import autotransfer
    from autotransfer.data import load_dataset

    torch.set_num_threads(threads)
    dataset = load_dataset(data)
    images = np.asarray(dataset.images[:n])
    if len(images) < n:
        images = np.concatenate([images] * (n // len(images) + 1))[:n]
    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: imports + data
    start = time.perf_counter()
    predictor = autotransfer.load_model(folder, device=device)
    load_s = time.perf_counter() - start
    predictor.predict_proba(images[:16])  # warm-up: first-call allocations, kernel choice
    cuda = predictor.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    proba = predictor.predict_proba(images)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert proba.shape == (n, len(predictor.classes_))
    print(
        json.dumps(
            {
                "members": len(predictor.members),
                "params": sum(p.numel() for m in predictor.members for p in m.parameters()),
                "images_per_s": n / seconds,
                "seconds": seconds,
                "load_s": load_s,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "base_rss_mib": base_mib,
                "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                "device": str(predictor.device),
            }
        )
    )


def measure(folder: Path, args: argparse.Namespace, cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "AUTOTRANSFER_CACHE": str(cache)}
    command = [sys.executable, __file__, "--child", str(folder), "--data", args.data, "--n", str(args.n)]
    command += ["--device", args.device, "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"the measurement of {folder.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--data", default="builtin:animals", help="a dataset spec to draw the images from")
    parser.add_argument("--n", type=int, default=1000, help="images scored per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each folder, interleaved")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measurement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.n, args.device, args.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = write_folders(root, args.model, args.resolution, args.data)
        runs: dict[str, list[dict]] = {name: [] for name in folders}
        for r in range(args.repeats):
            for name in list(folders) if r % 2 == 0 else list(folders)[::-1]:
                runs[name].append(measure(folders[name], args, root / "cache"))
                print(f"  round {r + 1} {name}: {runs[name][-1]['images_per_s']:.1f} images/s", file=sys.stderr)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    device = runs["single"][0]["device"]
    cuda = device.startswith("cuda")
    print(
        f"predict_proba of {args.n} images of {args.data} at {args.resolution} px, {args.model}, on {device}"
        f" ({args.threads} torch thread{'s' if args.threads > 1 else ''}); {args.repeats} interleaved runs per"
        " folder, each in a fresh process; medians"
    )
    header = (
        "| folder | networks | parameters | images/s (min–max) | load s | peak RSS MiB | RSS over data+imports MiB |"
    )
    print(header + (" CUDA peak MiB |" if cuda else ""))
    print("|---" * (header.count("|") - 1 + cuda) + "|")
    for name, rows in runs.items():
        speeds = [r["images_per_s"] for r in rows]
        line = (
            f"| {name} | {rows[0]['members']} | {rows[0]['params'] / 1e6:.2f} M | {median(name, 'images_per_s'):.1f}"
            f" ({min(speeds):.1f}–{max(speeds):.1f}) | {median(name, 'load_s'):.2f} | {median(name, 'peak_rss_mib'):.0f}"
            f" | {statistics.median(r['peak_rss_mib'] - r['base_rss_mib'] for r in rows):.0f} |"
        )
        print(line + (f" {median(name, 'cuda_peak_mib'):.0f} |" if cuda else ""))
    speed = median("single", "images_per_s") / median("ensemble", "images_per_s")
    paired = statistics.median(s["images_per_s"] / e["images_per_s"] for s, e in zip(runs["single"], runs["ensemble"]))
    rise = [
        statistics.median(r["peak_rss_mib"] - r["base_rss_mib"] for r in runs[name]) for name in ("single", "ensemble")
    ]
    print(
        f"single / ensemble: {speed:.2f}x the images/s (ratio of medians; median of the rounds' ratios"
        f" {paired:.2f}x; goal >= 2.5x); peak RSS"
        f" {median('single', 'peak_rss_mib') / median('ensemble', 'peak_rss_mib'):.2f}x, RSS over data+imports"
        f" {rise[0] / max(rise[1], 1e-9):.2f}x"
        + (
            f", CUDA peak {median('single', 'cuda_peak_mib') / median('ensemble', 'cuda_peak_mib'):.2f}x"
            if cuda
            else ""
        )
    )


if __name__ == "__main__":
    main()
