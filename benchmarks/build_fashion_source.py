"""Build the ``fashion-source`` laboratory model: a narrow timm ResNet-18 pretrained on Fashion-MNIST 0-4.

The laboratory source is a small, fully known pretrained model (with BatchNorm, G = 5 depth
groups, native input 32 px) that trains on 2 CPU cores in a few minutes, so that transfer
experiments can run end to end on a CPU with a source whose training data we control:

- source task: Fashion-MNIST classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat),
  the 30,000 images of the official *training* split;
- held-out source test split: the 5,000 official *test* images of classes 0-4; its
  accuracy (measured with the stored float16 weights) is recorded in the sidecar JSON.

Writes ``autotransfer/assets/fashion-source.safetensors`` (float16) and
``autotransfer/assets/fashion-source.json`` (architecture, classes, preprocessing, accuracy,
recipe, seed, versions), which ``create_backbone("fashion-source", k)`` loads.

Usage: ``python benchmarks/build_fashion_source.py [--epochs 5] [--out autotransfer/assets]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

__all__ = ["ARCH", "KWARGS", "CLASSES", "load_fashion", "to_input", "store_float16", "main"]

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
ARCH = "timm:resnet18"
KWARGS = {"channels": [32, 64, 128, 256]}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
INPUT_SIZE = 32
INTERPOLATION = "bicubic"


def _read_idx(path: Path) -> np.ndarray:
    """An idx-ubyte.gz file as a uint8 array (images ``(N, 28, 28)``, labels ``(N,)``)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion(split: str, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` (``train`` / ``test``) restricted to labels ``0..classes-1``.

    Returns ``(images (N, 28, 28) uint8 grey, labels (N,) int64)`` in file order. Uses
    ``autotransfer.data.load_dataset`` (``builtin:fashion-mnist?split=...&classes=0-4``) when
    it is importable, else reads the idx files; both give the images in file order.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', but got {split!r}")
    try:
        from autotransfer.data import load_dataset
    except ImportError:  # the data package predates load_dataset: read the files directly
        load_dataset = None
    if load_dataset is not None:
        ds = load_dataset(f"builtin:fashion-mnist?split={split}&classes=0-{classes - 1}")
        return np.ascontiguousarray(ds.images[..., 0]), ds.labels.astype(np.int64)
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    keep = labels < classes
    return images[keep], labels[keep]


def to_input(grey: np.ndarray, mean: float, std: float, size: int = INPUT_SIZE) -> torch.Tensor:
    """``(N, 28, 28)`` uint8 grey -> ``(N, 3, size, size)`` float normalised model input.

    Grey is replicated to RGB; resizing is bicubic (no antialias, this is an upscale),
    clamped to [0, 255] like an 8-bit image, then ``(x/255 - mean) / std``.
    """
    x = torch.from_numpy(np.array(grey, dtype=np.uint8)).float().unsqueeze(1)  # a writable copy
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 255)
    x = (x / 255.0 - mean) / std
    return x.expand(-1, 3, -1, -1).contiguous()


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random crop with ``pad`` px of edge padding: ``(B, 3, S, S)``."""
    b, _, s, _ = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + s, dx : dx + s]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on inputs ``x (N, 3, S, S)``, labels ``y (N,)``."""
    model.eval()
    correct = 0
    for lo in range(0, len(y), batch):
        correct += int((model(x[lo : lo + batch]).argmax(1) == y[lo : lo + batch]).sum())
    return correct / len(y)


def store_float16(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the asset stores it (floats in float16, no ``num_batches_tracked``),
    loaded back into ``model`` so that what is measured next is exactly what is stored."""
    state = {
        k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    return state


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)  # 1 is far faster on a shared CPU
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "autotransfer" / "assets")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    train_grey, train_y = load_fashion("train")
    test_grey, test_y = load_fashion("test")
    # dataset statistics of the training split, measured on the 32 px model input
    raw = to_input(train_grey, 0.0, 1.0)[:, 0]
    mean, std = round(float(raw.mean()), 4), round(float(raw.std()), 4)
    x_train, x_test = to_input(train_grey, mean, std), to_input(test_grey, mean, std)
    y_train, y_test = torch.from_numpy(train_y), torch.from_numpy(test_y)
    print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, mean {mean}, std {std}")

    model = timm.create_model(
        ARCH.split(":", 1)[1], pretrained=False, num_classes=len(CLASSES), **{k: tuple(v) for k, v in KWARGS.items()}
    )
    model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = len(y_train) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch // 2

    def schedule(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb = _augment(x_train[idx], gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
            step += 1
        acc = evaluate(model, x_test[:1000], y_test[:1000])
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {running / steps_per_epoch:.3f}, "
            f"test[:1000] acc {acc:.4f}, {time.perf_counter() - start:.0f}s",
            flush=True,
        )
    train_time = time.perf_counter() - start

    # store float16 and measure the accuracy of exactly what is stored
    state = store_float16(model)
    model = model.to(memory_format=torch.contiguous_format)
    test_acc = evaluate(model, x_test, y_test)
    train_acc = evaluate(model, x_train[:5000], y_train[:5000])
    print(
        f"stored float16 weights: source test accuracy {test_acc:.4f} on {len(y_test)} images "
        f"(train[:5000] {train_acc:.4f}); {train_time:.0f}s training"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "fashion-source.safetensors"
    save_file(state, str(weights), metadata={"arch": ARCH, "format": "pt"})
    os.chmod(weights, 0o644)  # safetensors writes 0600; the asset ships in the package
    meta = {
        "arch": ARCH,
        "kwargs": KWARGS,
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "mean": [mean] * 3,
        "std": [std] * 3,
        "input_size": INPUT_SIZE,
        "interpolation": INTERPOLATION,
        "dtype": "float16",
        "source_dataset": "builtin:fashion-mnist?classes=0-4",
        "source_train_split": f"Fashion-MNIST train images of classes 0-4 ({len(y_train)} images)",
        "source_test_split": f"Fashion-MNIST test (t10k) images of classes 0-4 ({len(y_test)} images, file order)",
        "source_test_accuracy": round(test_acc, 4),
        "source_test_size": int(len(y_test)),
        # what the guard (autotransfer.backbones.catalog.lab_training_images) reads
        "trained_on": {
            "dataset": "builtin:fashion-mnist",
            "split": "train",
            "classes": CLASSES,
            "count": int(len(y_train)),
            "per_class": {c: int((y_train == i).sum()) for i, c in enumerate(CLASSES)},
            "selection": "builtin:fashion-mnist?split=train&classes=0-4",
        },
        "tested_on": {
            "dataset": "builtin:fashion-mnist",
            "split": "test",
            "classes": CLASSES,
            "count": int(len(y_test)),
            "per_class": {c: int((y_test == i).sum()) for i, c in enumerate(CLASSES)},
            "selection": "builtin:fashion-mnist?split=test&classes=0-4",
        },
        "preprocess_note": "28 px grey replicated to RGB, bicubic upscale to 32 px (no antialias), "
        "clamped to [0, 255], then (x/255 - mean)/std",
        "recipe": {
            "optimizer": "SGD nesterov momentum 0.9",
            "lr": args.lr,
            "batch_size": args.batch_size,
            "weight_decay": args.weight_decay,
            "weight_decay_on_norm_and_bias": False,
            "schedule": "linear warmup for half an epoch, then cosine to 0",
            "epochs": args.epochs,
            "steps": total,
            "label_smoothing": 0.1,
            "augmentation": "horizontal flip, random crop with 2 px replicate padding",
            "channels_last": True,
            "train_time_s": round(train_time, 1),
            "threads": args.threads,
        },
        "seed": args.seed,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "script": "benchmarks/build_fashion_source.py",
    }
    (args.out / "fashion-source.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {weights} ({weights.stat().st_size / 2**20:.2f} MiB) and fashion-source.json")
    return meta


if __name__ == "__main__":
    main()
