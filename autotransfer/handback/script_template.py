"""The template of ``autotransfer export --format script`` (``handback.script``): a standalone
training script in torch and timm alone. The export writes this file with its own docstring and
the block between ``BEGIN PROTOCOL`` and ``END PROTOCOL`` replaced by the study's values; the
placeholders here only give the names their types, so that ruff and mypy check the body."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.nn.modules.batchnorm import _BatchNorm

# BEGIN PROTOCOL: ``handback.script`` replaces this block with the study's values
ARCH: str = "efficientnet_lite0"  # timm architecture
MODEL_KWARGS: dict = {}  # its constructor arguments beside num_classes
FRESH_KWARGS: dict = {}  # how autotransfer builds the fresh model re-init copies from
WEIGHTS: str = "source.safetensors"  # the source weights as the study used them (new head at zero)
NUM_CLASSES: int = 2
RESOLUTION: int = 64  # px, square
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
BATCH_SIZE: int = 32
STEPS: int = 100  # the budget, in optimizer steps
OPTIMIZER: str = "sgd"  # "sgd": classical momentum, no Nesterov; "adamw": betas (momentum, 0.999)
AUGMENT: bool = True  # random-resized crop (+ flip); False: the plain resized image
FLIP: bool = True  # horizontal flips
CROP_SCALE: tuple[float, float] = (0.08, 1.0)  # the crop's area, as a fraction of the image
CROP_RATIO: tuple[float, float] = (0.75, 4 / 3)  # the crop's aspect ratio range (width / height)
SEED: int = 0
METRIC: str = "accuracy"  # what --eval-dir reports
GROUPS: list[list[str]] = []  # depth groups, stem first: the module names each group runs (head excluded)
HEAD: str = "classifier"  # the new classifier
MEMBERS: list[dict] = []  # one protocol per network of the handed-back model
# END PROTOCOL


# -- data ---------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def natural_key(name: str):
    """Class order: natural sort, as timm's ImageFolder reader (2 before 10), ties by exact text."""
    parts = re.split(r"([0-9]+)", name.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize so the shorter side is ``size``, then a centre crop: (size, size, 3) uint8."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (width, height) != (size, size):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def load_folder(root: Path, classes: list[str] | None = None):
    """``(images (N, 3, R, R) uint8, labels (N,), class names)`` of an ImageFolder."""
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder: give an ImageFolder (one sub-folder of images per class)")
    found = sorted((p.name for p in root.iterdir() if p.is_dir()), key=natural_key)
    if classes is not None and found != classes:
        raise SystemExit(f"{root} has the classes {found}, but the model's are {classes}")
    if len(found) != NUM_CLASSES:
        raise SystemExit(f"{root} has {len(found)} class folders, but the model has {NUM_CLASSES} classes")
    classes = found
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                with Image.open(path) as image:
                    images.append(resize_square(image, RESOLUTION))
                labels.append(label)
    if not images:
        raise SystemExit(f"no images under {root}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels), classes


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """Pixel values (B, 3, R, R), 0-255 -> float (x / 255 - MEAN) / STD."""
    mean = torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=batch.device).view(1, 3, 1, 1)
    return batch.float() * (1.0 / (255.0 * std)) + (-mean / std)


def crop_params(count: int, generator: torch.Generator, device) -> torch.Tensor:
    """(count, 2, 3) affine maps of a random-resized crop, mirrored when flipped: torchvision's
    RandomResizedCrop (10 tries, then the largest centred crop within CROP_RATIO), with continuous
    crop boxes."""
    tries = 10
    draws = torch.rand((count, 2 * tries + 3), generator=generator, device=device)
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * draws[:, :tries]
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[:, tries : 2 * tries])
    w_frac, h_frac = torch.sqrt(area * aspect), torch.sqrt(area / aspect)  # square images
    valid = (w_frac <= 1.0) & (h_frac <= 1.0)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = valid.any(dim=1)
    # no try fits: the largest centred crop within CROP_RATIO (the whole image when 1 is within it)
    fallback_w, fallback_h = min(1.0, CROP_RATIO[1]), min(1.0, 1 / CROP_RATIO[0])
    w = torch.where(found, w_frac.gather(1, first).squeeze(1), torch.full((count,), fallback_w, device=device))
    h = torch.where(found, h_frac.gather(1, first).squeeze(1), torch.full((count,), fallback_h, device=device))
    half = torch.full_like(w, 0.5)
    centre_x = torch.where(found, w / 2 + draws[:, 2 * tries] * (1 - w), half)
    centre_y = torch.where(found, h / 2 + draws[:, 2 * tries + 1] * (1 - h), half)
    sign = torch.ones_like(w)
    if FLIP:
        sign = torch.where(draws[:, 2 * tries + 2] < 0.5, -sign, sign)
    theta = torch.zeros((count, 2, 3), device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, 2 * centre_x - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * centre_y - 1
    return theta


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random-resized crop (+ flip) of a uint8 batch, resampled bilinearly to RESOLUTION, normalised."""
    theta = crop_params(len(batch), generator, batch.device)
    grid = F.affine_grid(theta, [len(batch), 3, RESOLUTION, RESOLUTION], align_corners=False)
    return normalise(F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="border", align_corners=False))


class EpochSampler:
    """Batches of indices walking a fresh random permutation per epoch; a batch may straddle two."""

    def __init__(self, n: int, generator: torch.Generator, device) -> None:
        self.n, self.generator, self.device = n, generator, device
        self.perm, self.pos = torch.arange(n, device=device), n

    def next(self, size: int) -> torch.Tensor:
        parts = []
        while size > 0:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.generator, device=self.device)
                self.pos = 0
            take = min(size, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos, size = self.pos + take, size - take
        return torch.cat(parts)


# -- the model and its depth groups -------------------------------------------------------------------
def in_group(name: str, group: int) -> bool:
    """Whether a parameter, buffer or module ``name`` belongs to depth group ``group``."""
    return any(name == m or name.startswith(m + ".") for m in GROUPS[group])


def group_of(name: str) -> int | None:
    """The depth group of a parameter name; None for the head."""
    return next((g for g in range(len(GROUPS)) if in_group(name, g)), None)


def build_model(weights: Path) -> torch.nn.Module:
    """The source model with its new zero head, from the weights file (every key must match)."""
    model = timm.create_model(ARCH, pretrained=False, num_classes=NUM_CLASSES, **MODEL_KWARGS)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model


def freeze(model: torch.nn.Module, f: int) -> None:
    """Groups 0..f-1 get no gradient; the other groups and the head train."""
    for name, param in model.named_parameters():
        group = group_of(name)
        param.requires_grad_(group is None or group >= f)


def reinit(model: torch.nn.Module, r: int, seed: int) -> None:
    """Fresh weights (and BatchNorm statistics) for the last r groups: copied from a new model built
    with the CPU generator seeded with ``seed``, as autotransfer does."""
    if r == 0:
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        fresh = timm.create_model(ARCH, pretrained=False, **FRESH_KWARGS).state_dict()
    groups = range(len(GROUPS) - r, len(GROUPS))
    with torch.no_grad():
        for name, value in model.state_dict(keep_vars=True).items():
            if any(in_group(name, g) for g in groups):
                value.copy_(fresh[name])


def set_train_mode(model: torch.nn.Module, f: int, bn_mode: str, r: int) -> None:
    """Train mode, but the frozen groups in eval mode; with bn_mode "frozen" every BatchNorm in eval
    mode except those of the r re-initialised groups (they have no source statistics to keep)."""
    model.train()
    modules = dict(model.named_modules())
    for g in range(f):
        for name in GROUPS[g]:
            modules[name].eval()
    if bn_mode == "frozen":
        for name, module in modules.items():
            if isinstance(module, _BatchNorm):
                reinitialised = any(in_group(name, g) for g in range(len(GROUPS) - r, len(GROUPS)))
                module.train(reinitialised)


def no_decay(model: torch.nn.Module, name: str, param: torch.Tensor) -> bool:
    """Biases, norm parameters (1-d tensors) and token / position embeddings get no weight decay."""
    listed = getattr(model, "no_weight_decay", None)  # timm models name their own
    extra = set(listed()) if callable(listed) else set()
    tokens = ("cls_token", "class_token", "pos_embed", "pos_embedding", "dist_token", "reg_token")
    return param.ndim <= 1 or name in extra or name.split(".")[-1] in tokens


def param_groups(model: torch.nn.Module, p: dict, sp_names: set[str]) -> list[dict]:
    """Optimizer groups: trainable group g at lr * layer_decay ** (G - 1 - g), the head at
    lr * head_lr_mult; weight decay off for 1-d parameters and for the L2-SP ones (``sp_names``)."""
    G = len(GROUPS)
    named = list(model.named_parameters())
    units: list[tuple[int | None, float]] = [
        (g, p["lr"] * p["layer_decay"] ** (G - 1 - g)) for g in range(p["freeze"], G)
    ]
    units.append((None, p["lr"] * p["head_lr_mult"]))
    out = []
    for group, lr in units:
        members = [(n, q) for n, q in named if group_of(n) == group]
        decay = [(n, q) for n, q in members if not no_decay(model, n, q)]
        plain = [(n, q) for n, q in members if no_decay(model, n, q)]
        for part, wd in ((decay, p["weight_decay"]), (plain, 0.0)):
            kept = [q for n, q in part if n not in sp_names]
            anchored = [q for n, q in part if n in sp_names]
            if kept:
                out.append({"params": kept, "lr": lr, "weight_decay": wd})
            if anchored:
                out.append({"params": anchored, "lr": lr, "weight_decay": 0.0})
    return out


def l2sp_names(model: torch.nn.Module, p: dict) -> list[str]:
    """The trainable parameters that keep their pretrained values: groups f..G-r-1."""
    G = len(GROUPS)
    return [
        n
        for n, q in model.named_parameters()
        if q.requires_grad and group_of(n) is not None and p["freeze"] <= group_of(n) < G - p["reinit"]
    ]


def join_steps(p: dict) -> list[tuple[int, int]]:
    """``[(step, group)]``: the first step (1-based) that trains each pretrained trainable group
    f..G-r-1, top group first. "one-stage": step 1; "lp-ft": all at round(stage_frac * STEPS) + 1;
    "gradual": the k-th of K = G-r-f groups from the top at round(k / K * stage_frac * STEPS) + 1."""
    top = len(GROUPS) - p["reinit"]
    count = top - p["freeze"]
    out = []
    for k in range(1, count + 1):
        if p["schedule"] == "one-stage":
            start = 0
        elif p["schedule"] == "lp-ft":
            start = int(round(p["stage_frac"] * STEPS))
        else:
            start = int(round(k / count * p["stage_frac"] * STEPS))
        out.append((start + 1, top - k))
    return out


def frozen_depth(step: int, p: dict) -> int:
    """How many leading groups do not train at (1-based) ``step``: f once every group has joined."""
    return len(GROUPS) - p["reinit"] - sum(1 for s, _ in join_steps(p) if s <= step)


def lr_factor(step: int) -> float:
    """The lr multiplier after ``step`` optimizer steps: cosine from 1 to 0 over STEPS."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / STEPS)))


def make_optimizer(groups: list[dict], p: dict) -> torch.optim.Optimizer:
    if OPTIMIZER == "sgd":
        return torch.optim.SGD(
            groups, lr=p["lr"], momentum=p["momentum"], nesterov=False, weight_decay=p["weight_decay"]
        )
    return torch.optim.AdamW(groups, lr=p["lr"], betas=(p["momentum"], 0.999), weight_decay=p["weight_decay"])


# -- training -----------------------------------------------------------------------------------------
def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, p: dict, device) -> torch.nn.Module:
    """Fine-tune ``model`` on the uint8 ``images`` for STEPS steps under protocol ``p``."""
    model.to(device)
    images, labels = images.to(device), labels.to(device)
    freeze(model, p["freeze"])
    reinit(model, p["reinit"], SEED)
    params = dict(model.named_parameters())
    sp = l2sp_names(model, p) if p["l2sp"] > 0 else []
    anchors = [params[n].detach().clone() for n in sp]
    # the optimizer holds groups f..G-1 from the start; the schedule's later groups join below
    optimizer = make_optimizer(param_groups(model, p, set(sp)), p)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator(device=device).manual_seed(SEED)
    sampler = EpochSampler(len(labels), generator, device)
    depth = frozen_depth(1, p)  # groups 0..depth-1 do not train yet (f once all have joined)
    freeze(model, depth)
    set_train_mode(model, depth, p["bn_mode"], p["reinit"])
    for step in range(1, STEPS + 1):
        if frozen_depth(step, p) != depth:  # the schedule's next groups join at this step
            depth = frozen_depth(step, p)
            freeze(model, depth)
            set_train_mode(model, depth, p["bn_mode"], p["reinit"])
            print(f"step {step}: groups {depth}..{len(GROUPS) - 1} and the head train", flush=True)
        idx = sampler.next(BATCH_SIZE)
        x = augment(images[idx], generator) if AUGMENT else normalise(images[idx])
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).float(), labels[idx])
        loss.backward()
        for name, w0 in zip(sp, anchors):  # L2-SP: the gradient of alpha/2 ||w - w0||^2
            param = params[name]
            if not param.requires_grad:  # its group has not joined yet: it stays untouched
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad.add_(param.detach() - w0, alpha=p["l2sp"])
        optimizer.step()
        scheduler.step()
        if not torch.isfinite(loss):
            raise SystemExit(f"training diverged: loss {loss.item()} at step {step}; lower the learning rate")
        if step % max(1, STEPS // 10) == 0 or step == STEPS:
            print(f"step {step}/{STEPS}  loss {loss.item():.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device) -> float:
    """METRIC (accuracy, or balanced accuracy: the mean per-class recall) of the plain view."""
    model.eval()
    preds = torch.cat(
        [model(normalise(images[i : i + 256].to(device))).argmax(1).cpu() for i in range(0, len(images), 256)]
    )
    if METRIC != "balanced_accuracy":
        return float((preds == labels).float().mean())
    recalls = [float((preds[labels == c] == c).float().mean()) for c in labels.unique()]
    return sum(recalls) / len(recalls)


def save(model: torch.nn.Module, out: Path, classes: list[str]) -> None:
    """A model folder in timm's pretrained format: config.json + model.safetensors, both with the
    mode the umask gives a new file (safetensors alone would write 0600)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architecture": ARCH,
        "num_classes": NUM_CLASSES,
        "label_names": classes,
        **({"model_args": MODEL_KWARGS} if MODEL_KWARGS else {}),
        "pretrained_cfg": {
            "input_size": [3, RESOLUTION, RESOLUTION],
            "interpolation": "bicubic",
            "mean": list(MEAN),
            "std": list(STD),
            "crop_pct": 1.0,
            "crop_mode": "center",
            "num_classes": NUM_CLASSES,
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    os.chmod(out / "model.safetensors", (out / "config.json").stat().st_mode & 0o777)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("data", type=Path, help="an ImageFolder: one sub-folder of images per class")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--weights", type=Path, default=Path(__file__).with_name(WEIGHTS), help="the initial weights")
    parser.add_argument("--eval-dir", type=Path, help="an ImageFolder of the same classes to score the model on")
    parser.add_argument("--member", type=int, default=1, help=f"which network to train (1 to {len(MEMBERS)})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if not 1 <= args.member <= len(MEMBERS):
        parser.error(f"--member must be 1 to {len(MEMBERS)}")
    protocol = MEMBERS[args.member - 1]
    images, labels, classes = load_folder(args.data)
    print(f"training member {args.member} (trial {protocol['trial']}) on {len(labels)} images, {STEPS} steps")
    model = train(build_model(args.weights), images, labels, protocol, torch.device(args.device))
    save(model, args.out, classes)
    print(f"wrote {args.out}")
    if args.eval_dir:
        test_images, test_labels, _ = load_folder(args.eval_dir, classes)
        print(
            json.dumps(
                {METRIC: score(model, test_images, test_labels, torch.device(args.device)), "images": len(test_labels)}
            )
        )


if __name__ == "__main__":
    main()
