"""Trial throughput: autotransfer's trial loop against a plain ImageFolder + DataLoader loop.

Both loops train the same model (a fresh ``efficientnet_lite0`` with package-shipped ImageNet
weights and a zero-initialised head) on the same images for the same number of optimizer steps,
with the same augmentation (random-resized-crop, scale (0.35, 1), ratio (3/4, 4/3), + horizontal
flip when the dataset allows it), the same optimizer (SGD, momentum, ``param_groups``), the same
warmup + cosine schedule and the same freeze depth, then score the same validation images.

- reference: the images written as PNG files into a temporary ImageFolder tree, read by
  ``torchvision.datasets.ImageFolder`` + ``DataLoader`` (``--workers`` processes doing the
  augmentation on CPU), fp32, contiguous memory format, no caching.
- fair reference (``--fair``): the same loader loop as a careful user writes it on a GPU: mixed
  precision (bf16 autocast where the GPU has native bf16, else fp16 with a ``GradScaler``),
  channels_last model and inputs, pinned host memory with non-blocking copies, persistent loader
  workers, ``cudnn.benchmark``, and ``--warmup`` untimed steps on a throwaway copy of the model
  (cuDNN autotuning, allocator, loader start-up) before the clock starts. Speed-ups are claimed
  against this one.
- autotransfer: ``train_protocol`` on ``DeviceBatches`` (device-resident uint8, batched
  on-device augmentation), channels_last, bf16 autocast on CUDA, frozen-prefix caching for
  ``f > 0``. "cold" is one trial with an empty ``PrefixCache`` (the cache build is counted);
  "warm" is a second trial at the same ``f`` that reuses it (what later trials of a study see).

images/s = training images / wall time of the trial, validation included for both. With
``--repeats R`` every trial runs R times (seeds ``seed .. seed+R-1``), interleaved; the fastest
run's throughput is reported (on a shared machine the slow runs measure the neighbours, not the
loop) and the accuracy is the mean over the R seeds. images/CPU-s = training
images / CPU seconds of the trial (this process plus the reference's loader workers): the
work each loop does, which neighbours on a shared machine disturb much less than wall time.

Usage::

    python benchmarks/bench_trial_loop.py                       # CPU, a few minutes
    python benchmarks/bench_trial_loop.py --device cuda --n 2000 --size 224 --steps 300
    python benchmarks/bench_trial_loop.py --model tv:resnet50 --random-weights ...   # no offline weights
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from autotransfer.backbones import create_backbone, freeze, param_groups, train_mode
from autotransfer.data import DeviceBatches, load_dataset, stratified_split, stratified_subsample, to_array
from autotransfer.train import PrefixCache, TrainConfig, lr_lambda, train_protocol

__all__ = ["main", "reference_trial", "autotransfer_trial"]

SCALE = (0.35, 1.0)
RATIO = (3 / 4, 4 / 3)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """Write ``(N, S, S, 3)`` uint8 images as ``root/<class>/<i>.png``."""
    for c in range(len(classes)):
        (root / f"{c:03d}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(root / f"{int(label):03d}" / f"{i:05d}.png")


def reference_trial(
    args, train_dir: Path, val_dir: Path, num_classes: int, f: int, flip: bool, seed: int, fair: bool = False
) -> dict:
    """A plain loop: ImageFolder + DataLoader + torchvision transforms, no caching; fp32 unless
    ``fair`` (AMP, channels_last, pinned memory, cudnn.benchmark and a warm-up, see above)."""
    from torchvision import datasets, transforms

    backbone = create_backbone(args.model, num_classes, pretrained=not args.random_weights)
    pre = backbone.preprocessing
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    augment = [transforms.RandomResizedCrop(args.size, scale=SCALE, ratio=RATIO)]
    if flip:
        augment.append(transforms.RandomHorizontalFlip())
    normalise = [transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)]
    cpu0, start = cpu_seconds(), time.perf_counter()
    train_set = datasets.ImageFolder(str(train_dir), transform=transforms.Compose(augment + normalise))
    val_set = datasets.ImageFolder(str(val_dir), transform=transforms.Compose(normalise))
    loader_opts = dict(pin_memory=cuda, persistent_workers=args.workers > 0) if fair else {}
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(seed),
        **loader_opts,
    )
    model = backbone.model.to(device)
    layout = torch.channels_last if fair else torch.contiguous_format
    model = model.to(memory_format=layout)
    amp_dtype = None
    if fair and cuda:
        torch.backends.cudnn.benchmark = True
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.cuda.amp.GradScaler() if amp_dtype == torch.float16 else None

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=amp_dtype)

    def to_device(x, y):
        x = x.to(device, non_blocking=fair).contiguous(memory_format=layout)
        return x, y.to(device, non_blocking=fair)

    freeze(backbone, f)
    if fair and args.warmup > 0:  # untimed, on a copy: the trial below starts from the same state
        spare = copy.deepcopy(model)
        spare_opt = torch.optim.SGD([p for p in spare.parameters() if p.requires_grad], lr=0.0)
        done = 0
        while done < args.warmup:
            for x, y in loader:
                x, y = to_device(x, y)
                with autocast():
                    loss = F.cross_entropy(spare(x), y)
                spare_opt.zero_grad(set_to_none=True)
                loss.backward()
                spare_opt.step()
                done += 1
                if done == args.warmup:
                    break
        del spare, spare_opt
        if cuda:
            torch.cuda.synchronize()
        loader.generator.manual_seed(seed)  # the timed trial sees the same batches as without warm-up
        cpu0, start = cpu_seconds(), time.perf_counter()  # the warm-up is not timed
    groups = param_groups(
        backbone, f, lr=args.lr, head_lr_mult=args.head_lr_mult, layer_decay=1.0, weight_decay=args.weight_decay
    )
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.steps, args.warmup_frac))
    step = 0
    while step < args.steps:
        for x, y in loader:
            train_mode(backbone, f, "adapt")
            x, y = to_device(x, y)
            with autocast():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            step += 1
            if step == args.steps:
                break
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val_set, batch_size=256, num_workers=0, pin_memory=fair and cuda):
            x, y = to_device(x, y)
            with autocast():
                correct += int((model(x).argmax(1) == y).sum())
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    del loader  # persistent workers end here
    gc.collect()  # make sure every loader worker has been joined, so its CPU time is counted
    cpu = cpu_seconds() - cpu0
    return {
        "images_per_s": step * args.batch_size / wall,
        "images_per_cpu_s": step * args.batch_size / cpu,
        "accuracy": correct / len(val_set),
        "wall_s": wall,
        "cpu_s": cpu,
    }


def autotransfer_trial(
    args, train: DeviceBatches, val: DeviceBatches, num_classes: int, f: int, cache: PrefixCache, seed: int
) -> dict:
    """One ``train_protocol`` trial at freeze depth ``f`` (sharing ``cache`` across calls)."""
    backbone = create_backbone(args.model, num_classes, pretrained=not args.random_weights)
    config = TrainConfig(
        lr=args.lr,
        momentum=args.momentum,
        head_lr_mult=args.head_lr_mult,
        freeze=f,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        resolution=args.size,
        steps=args.steps,
        eval_every=args.steps,
        warmup_frac=args.warmup_frac,
        views=args.views,
        augment=True,
        seed=seed,
        device=args.device,
    )
    cpu0 = cpu_seconds()
    result = train_protocol(backbone, train, val, config, cache=cache)
    cpu = cpu_seconds() - cpu0
    return {
        "images_per_s": result.images_per_s,
        "images_per_cpu_s": result.steps_done * args.batch_size / cpu,
        "accuracy": result.final_score,
        "wall_s": result.wall_time_s,
        "cpu_s": cpu,
        "cache_build_s": result.cache_build_s,
        "cached": result.cached,
        "cache_hit": result.cache_hit,
        "peak_memory_bytes": result.peak_memory_bytes,
        "notes": result.notes,
        "prefix_bf16": any("bf16 autocast" in n for n in result.notes),
    }


def _best(runs: list[dict]) -> dict | None:
    """Throughput of the fastest repeat (wall and CPU each), accuracy averaged over the repeats'
    seeds; every run's numbers are kept."""
    if not runs:
        return None
    best = dict(max(runs, key=lambda r: r["images_per_s"]))
    best["images_per_cpu_s"] = max(r["images_per_cpu_s"] for r in runs)
    best["all_images_per_s"] = [r["images_per_s"] for r in runs]
    best["all_images_per_cpu_s"] = [r["images_per_cpu_s"] for r in runs]
    best["all_accuracy"] = [r["accuracy"] for r in runs]
    best["accuracy"] = float(np.mean(best["all_accuracy"]))
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="builtin:animals")
    parser.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="any backbone spec (tv:resnet50, timm:resnet50, ...); lite0's weights ship with the package",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random initial weights (no pretrained download; for throughput only: accuracies "
        "then say nothing about transfer)",
    )
    parser.add_argument("--n", type=int, default=300, help="images, before a 75/25 train/val split")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--head-lr-mult", type=float, default=10.0)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--warmup-frac", type=float, default=0.05)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--freeze", default="0,half,all", help="comma list of ints, 'half' (G//2), 'all' (G)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-cache trials")
    parser.add_argument(
        "--compare-fp32-build",
        action="store_true",
        help="also run each frozen cold trial with the prefix built in fp32 (bf16_build=False)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run each trial this many times (seeds seed..seed+R-1), interleaved: fastest throughput, mean accuracy",
    )
    parser.add_argument(
        "--fair", action="store_true", help="also run the fair reference (AMP, channels_last, pinned memory, warm-up)"
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up steps of the fair reference")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    ds = stratified_subsample(load_dataset(args.data), args.n, seed=args.seed)
    splits = stratified_split(ds, val=0.25, test=0.0, seed=args.seed)
    train_x, val_x = to_array(splits.train, args.size), to_array(splits.val, args.size)
    train_y, val_y = np.asarray(splits.train.labels), np.asarray(splits.val.labels)
    num_classes = len(ds.classes)
    probe = create_backbone(args.model, num_classes, pretrained=not args.random_weights)
    G = probe.num_groups
    pre = probe.preprocessing
    depths = []
    for token in args.freeze.split(","):
        token = token.strip()
        depths.append(G // 2 if token == "half" else G if token == "all" else int(token))

    common = dict(
        device=args.device,
        out_size=args.size,
        mean=pre.mean,
        std=pre.std,
        flip=ds.flip,
        scale=SCALE,
        ratio=RATIO,
        channels_last=True,
    )  # as search.prepared builds them
    train_b = DeviceBatches(train_x, train_y, fingerprint=splits.train.fingerprint, **common)
    val_b = DeviceBatches(val_x, val_y, fingerprint=splits.val.fingerprint, **common)

    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    header = (
        f"{args.model} (G={G}) on {args.data}: {len(train_y)} train / {len(val_y)} val images at "
        f"{args.size} px, {args.steps} steps x {args.batch_size}, device {args.device}"
        f"{' (' + gpu + ')' if gpu else ''}, {args.threads} threads, {args.workers} loader workers, "
        f"V={args.views}{', random weights' if args.random_weights else ''}"
    )
    print(header)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, val_dir = Path(tmp) / "train", Path(tmp) / "val"
        write_image_folder(train_dir, train_x, train_y, ds.classes)
        write_image_folder(val_dir, val_x, val_y, ds.classes)
        for f in depths:
            runs = {"reference": [], "fair": [], "cold": [], "warm": [], "cold_fp32": []}
            for rep in range(args.repeats):  # interleaved, so shared-machine load hits all alike
                seed = args.seed + rep
                torch.manual_seed(seed)  # the reference's augmentation and the head's dropout
                runs["reference"].append(reference_trial(args, train_dir, val_dir, num_classes, f, ds.flip, seed))
                if args.fair:
                    torch.manual_seed(seed)
                    runs["fair"].append(
                        reference_trial(args, train_dir, val_dir, num_classes, f, ds.flip, seed, fair=True)
                    )
                cache = PrefixCache()
                runs["cold"].append(autotransfer_trial(args, train_b, val_b, num_classes, f, cache, seed))
                if f > 0 and not args.no_warm:
                    runs["warm"].append(autotransfer_trial(args, train_b, val_b, num_classes, f, cache, seed))
                if f > 0 and args.compare_fp32_build:
                    runs["cold_fp32"].append(
                        autotransfer_trial(args, train_b, val_b, num_classes, f, PrefixCache(bf16_build=False), seed)
                    )
            ref, cold, warm, cold32 = (_best(runs[k]) for k in ("reference", "cold", "warm", "cold_fp32"))
            row = {
                "freeze": f,
                "reference": ref,
                "cold": cold,
                "warm": warm,
                "ratio_cold": cold["images_per_s"] / ref["images_per_s"],
                "ratio_warm": None if warm is None else warm["images_per_s"] / ref["images_per_s"],
            }
            rows.append(row)
            fair = _best(runs["fair"])
            if fair is not None:
                row["fair"] = fair
                row["ratio_cold_fair"] = cold["images_per_s"] / fair["images_per_s"]
                row["ratio_warm_fair"] = None if warm is None else warm["images_per_s"] / fair["images_per_s"]
            row["cpu_ratio_cold"] = cold["images_per_cpu_s"] / ref["images_per_cpu_s"]
            row["cpu_ratio_warm"] = None if warm is None else warm["images_per_cpu_s"] / ref["images_per_cpu_s"]
            if cold32 is not None:
                row["cold_fp32"] = cold32
                row["ratio_cold_fp32"] = cold32["images_per_s"] / ref["images_per_s"]
            fp32_txt = (
                ""
                if cold32 is None
                else f" | cold, fp32 prefix build {cold32['images_per_s']:6.0f} img/s ({row['ratio_cold_fp32']:.1f}x),"
                f" acc {cold32['accuracy']:.3f}, build {cold32['cache_build_s']:.1f} s"
            )
            warm_txt = (
                ""
                if warm is None
                else f" | warm {warm['images_per_s']:6.0f} img/s ({row['ratio_warm']:.1f}x), "
                f"{warm['images_per_cpu_s']:6.0f} img/CPU-s ({row['cpu_ratio_warm']:.1f}x)"
            )
            print(
                f"f={f:2d} | reference {ref['images_per_s']:6.0f} img/s, {ref['images_per_cpu_s']:6.0f} img/CPU-s, "
                f"acc {ref['accuracy']:.3f} | autotransfer cold {cold['images_per_s']:6.0f} img/s "
                f"({row['ratio_cold']:.1f}x), {cold['images_per_cpu_s']:6.0f} img/CPU-s ({row['cpu_ratio_cold']:.1f}x), "
                f"acc {cold['accuracy']:.3f}, prefix build {cold['cache_build_s']:.1f} s"
                f"{' (bf16)' if cold.get('prefix_bf16') else ''}{warm_txt}{fp32_txt}",
                flush=True,
            )
            if fair is not None:
                print(
                    f"     | fair reference {fair['images_per_s']:6.0f} img/s, acc {fair['accuracy']:.3f} | "
                    f"autotransfer cold {row['ratio_cold_fair']:.2f}x"
                    + ("" if warm is None else f", warm {row['ratio_warm_fair']:.2f}x")
                    + " of it",
                    flush=True,
                )
    out = {
        "header": header,
        "gpu": gpu,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
