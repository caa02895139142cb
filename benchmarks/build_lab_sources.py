"""Build the ``digit-source`` and ``silhouette-source`` laboratory models (issue 29), as ``fashion-source``.

Each is the same narrow timm ResNet-18 as ``fashion-source`` (channels 32-64-128-256, BatchNorm,
G = 5 depth groups, native input 32 px, float16), pretrained on classes 0-4 of one built-in pool,
so that classes 5-9 of the same pool are a *near* target it never saw an image of:

- ``digit-source``: ``builtin:mnist5k?classes=0-4`` (MNIST digits 0-4, 2,500 images, 500 per
  class); near target ``builtin:mnist5k?classes=5-9``;
- ``silhouette-source``: ``builtin:animals?classes=0-4`` (Bear, Bird, Cat, Cow, Dog silhouettes,
  5,000 images); near target ``builtin:animals?classes=5-9`` (Elephant ... Zebra).

The held-out source test set is ``stratified_subsample(pool 0-4, n_test, seed 0)`` (the spec
``builtin:<pool>?classes=0-4&n=<n_test>&seed=0`` loads exactly it); the model trains on the rest.
No full MNIST or second silhouette set is installed offline (checked against the package lists),
so the separation is by class: classes 0-4 of these pools are the source's, never a benchmark's
(``autotransfer.backbones.catalog.check_not_trained_on`` refuses a target that includes them).

Writes ``autotransfer/assets/<name>.safetensors`` (float16) and ``<name>.json`` (architecture,
classes, preprocessing, the images trained and tested on, held-out accuracy of the stored float16
weights, recipe, seed, versions).

Usage: ``OMP_NUM_THREADS=1 nice -n 19 python benchmarks/build_lab_sources.py [--sources digit-source]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_fashion_source import ARCH, INPUT_SIZE, INTERPOLATION, KWARGS, evaluate, store_float16, to_input  # noqa: E402

#: name -> (pool, source classes selector, held-out test images, epochs, horizontal flips)
SOURCES: dict[str, tuple[str, str, int, int, bool]] = {
    "digit-source": ("mnist5k", "0-4", 500, 12, False),
    "silhouette-source": ("animals", "0-4", 1000, 12, True),
}
NEAR_TARGETS = {"digit-source": "builtin:mnist5k?classes=5-9", "silhouette-source": "builtin:animals?classes=5-9"}


def split_pool(name: str, seed: int = 0):
    """``(train, test, pool_spec, test_spec)`` of a source: ``ImageDataset`` halves of its pool."""
    from autotransfer.data import load_dataset
    from autotransfer.data.sampling import subsample_indices

    pool, classes, n_test, _, _ = SOURCES[name]
    spec = f"builtin:{pool}?classes={classes}"
    ds = load_dataset(spec)
    test_idx = subsample_indices(ds, n_test, seed)
    train_idx = np.setdiff1d(np.arange(len(ds)), test_idx)
    return ds.subset(train_idx), ds.subset(test_idx), spec, f"{spec}&n={n_test}&seed={seed}"


def _augment(x: torch.Tensor, gen: torch.Generator, flip: bool, pad: int = 2) -> torch.Tensor:
    """Optional horizontal flip, then a random crop with ``pad`` px of edge padding: ``(B, 3, S, S)``."""
    b, _, s, _ = x.shape
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + s, dx : dx + s]


def build(name: str, args: argparse.Namespace) -> dict:
    """Train one source, store it float16, measure the stored weights, write weights + sidecar."""
    pool, selector, n_test, epochs, flip = SOURCES[name]
    epochs = args.epochs or epochs
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train, test, pool_spec, test_spec = split_pool(name, args.seed)
    train_grey, test_grey = np.asarray(train.images)[..., 0], np.asarray(test.images)[..., 0]
    raw = to_input(train_grey, 0.0, 1.0)[:, 0]
    mean, std = round(float(raw.mean()), 4), round(float(raw.std()), 4)
    x_train, x_test = to_input(train_grey, mean, std), to_input(test_grey, mean, std)
    y_train, y_test = torch.from_numpy(train.labels.astype(np.int64)), torch.from_numpy(test.labels.astype(np.int64))
    classes = list(train.classes)
    print(f"{name}: train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, mean {mean}, std {std}", flush=True)

    model = timm.create_model(
        ARCH.split(":", 1)[1], pretrained=False, num_classes=len(classes), **{k: tuple(v) for k, v in KWARGS.items()}
    ).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = len(y_train) // args.batch_size
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch

    def schedule(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb = _augment(x_train[idx], gen, flip).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
        if (epoch + 1) % 4 == 0 or epoch + 1 == epochs:
            acc = evaluate(model, x_test, y_test)
            print(
                f"  epoch {epoch + 1}/{epochs}: loss {running / steps_per_epoch:.3f}, test acc {acc:.4f}, "
                f"{time.perf_counter() - start:.0f}s",
                flush=True,
            )
    train_time = time.perf_counter() - start

    state = store_float16(model)
    model = model.to(memory_format=torch.contiguous_format)
    test_acc, train_acc = evaluate(model, x_test, y_test), evaluate(model, x_train, y_train)
    print(f"  stored float16: test {test_acc:.4f} on {len(y_test)}, train {train_acc:.4f}; {train_time:.0f}s training")

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{name}.safetensors"
    save_file(state, str(weights), metadata={"arch": ARCH, "format": "pt"})
    os.chmod(weights, 0o644)
    meta = {
        "arch": ARCH,
        "kwargs": KWARGS,
        "num_classes": len(classes),
        "classes": classes,
        "mean": [mean] * 3,
        "std": [std] * 3,
        "input_size": INPUT_SIZE,
        "interpolation": INTERPOLATION,
        "dtype": "float16",
        "source_dataset": pool_spec,
        "source_train_split": f"{pool_spec} less the held-out test set ({len(y_train)} images)",
        "source_test_split": f"{test_spec}: stratified_subsample(seed {args.seed}), {len(y_test)} images",
        "source_test_accuracy": round(test_acc, 4),
        "source_test_size": int(len(y_test)),
        "source_train_accuracy": round(train_acc, 4),
        # what the guard (autotransfer.backbones.catalog.lab_training_images) reads
        "trained_on": {
            "dataset": f"builtin:{pool}",
            "split": None,
            "classes": classes,
            "count": int(len(y_train)),
            "per_class": {c: int((y_train == i).sum()) for i, c in enumerate(classes)},
            "selection": f"{pool_spec} minus {test_spec}",
        },
        "tested_on": {
            "dataset": f"builtin:{pool}",
            "split": None,
            "classes": classes,
            "count": int(len(y_test)),
            "per_class": {c: int((y_test == i).sum()) for i, c in enumerate(classes)},
            "selection": test_spec,
        },
        "near_target": NEAR_TARGETS[name],
        "preprocess_note": "28 px grey replicated to RGB, bicubic upscale to 32 px (no antialias), "
        "clamped to [0, 255], then (x/255 - mean)/std",
        "recipe": {
            "optimizer": "SGD nesterov momentum 0.9",
            "lr": args.lr,
            "batch_size": args.batch_size,
            "weight_decay": args.weight_decay,
            "weight_decay_on_norm_and_bias": False,
            "schedule": "linear warmup for one epoch, then cosine to 0",
            "epochs": epochs,
            "steps": total,
            "label_smoothing": 0.1,
            "augmentation": ("horizontal flip, " if flip else "") + "random crop with 2 px replicate padding",
            "channels_last": True,
            "train_time_s": round(train_time, 1),
            "threads": args.threads,
        },
        "seed": args.seed,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "script": "benchmarks/build_lab_sources.py",
    }
    (args.out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  wrote {weights} ({weights.stat().st_size / 2**20:.2f} MiB) and {name}.json", flush=True)
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated: " + ", ".join(SOURCES))
    parser.add_argument("--epochs", type=int, default=0, help="0: each source's default")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "autotransfer" / "assets")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.sources.split(","):
        if name not in SOURCES:
            parser.error(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
        build(name, args)


if __name__ == "__main__":
    main()
