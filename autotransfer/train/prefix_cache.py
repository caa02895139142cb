"""Frozen-prefix feature caching: run the frozen depth groups once, train the rest on their outputs.

With freeze depth ``f > 0`` the groups ``0..f-1`` get no gradient and run in eval mode
(frozen BN statistics, no dropout), so their output is a fixed function of the input image.
For a backbone whose groups chain (``Backbone.chain``) we run that prefix **once** per
(frozen weights, f, dataset, augmentation view) and keep the outputs; each training step then
runs only groups ``f..G-1`` and the head on the stored tensors. At ``f = G`` training is a
linear probe on stored final features; when the head starts with global average pooling
(checked numerically, not assumed) the final maps are stored already pooled, ``(C, 1, 1)``
per image, which makes the probe cheap in time and memory.

**Augmentation equivalence (a finite view bank).** On-the-fly augmentation draws a fresh
random-resized-crop + flip of every image in every epoch, which a cache cannot store for ever.
We keep a fixed bank of ``V`` augmented views per image (default ``V = 8``): view ``v`` of the
training set is ``DeviceBatches.augment`` over all images in index order, in chunks, with a
generator seeded by ``(seed, v)`` (``view_seed``); its prefix outputs fill slot ``v`` of a
``(V, N, *feature_shape)`` tensor. The training loop pairs epoch ``e < V`` with view ``e`` for
every image, so the first ``V`` epochs see each image under ``V`` independent fresh
augmentations, exactly as the on-the-fly loop does (only the random draws differ); from
epoch ``V`` on each image in a batch gets one of its ``V`` views drawn uniformly at random.
Each image's augmentations are thus ``V`` independent draws of the on-the-fly distribution,
reused after ``V`` epochs: a finite-bank approximation that is exact up to ``V`` epochs and
becomes exact as ``V`` grows. Views are computed when first needed (``PrefixCache.ensure``),
so a short or pruned trial pays only for the epochs it ran and the next trial with the same
key picks up where it stopped. The benchmark (``benchmarks/bench_trial_loop.py``) checks that
final accuracy does not drop against the uncached on-the-fly reference. Without augmentation
``V = 1`` (the plain view). Validation features are cached too (plain view, ``(M, *shape)``).

The cache is a small ``PrefixCache`` object that the search layer keeps alive between trials:
entries are keyed by (model spec, a digest of the frozen prefix's weights and buffers, f, V,
seed, augment, resolution, train data identity, val data identity, storage dtype, device), so
trials with the same ``f`` reuse one entry, and a different model or dataset can never hit a
stale one. It is LRU with a byte cap (the full ``V``-view size is reserved up front); an entry
that alone would exceed the cap is not built and the trial runs uncached (``PrefixCache.get``
returns ``None`` and a note saying why).

**Precision of the build.** The prefix runs under bf16 autocast when the trial does (CUDA)
and, by default, also on a CPU with native bf16 matrix units (AMX or AVX512-BF16,
``native_cpu_bf16``): there oneDNN runs the frozen convolutions 1.6-2.9x faster in bf16 than in
fp32 (``benchmarks/RESULTS.md``, "Trial loop"), while the stored features are half precision
anyway. Only the frozen prefix is affected: the trainable groups still train in fp32 on CPU
(bf16 backward is slower there). ``bf16_build=False`` turns this off.

Storage is bfloat16 under bf16 autocast (CUDA), else float16 (bfloat16 if float16 would
overflow); pass ``dtype=torch.float32`` for bit-faithful features (an fp32 store is always built
in fp32). **Layout and dtype as the step consumes them:** maps are stored channels_last when the
trial runs channels_last (``(V, N, H, W, C)`` memory), so a gathered batch is already in the
step's layout; under bf16 autocast the bfloat16 store is handed over as it is
(``CachedPrefix.step_dtype``: the first convolution would cast to bfloat16 anyway, and
bf16 -> fp32 -> bf16 is exact), else converted once to float32. Per step that is the gather and
at most one conversion (before: to float32, to channels_last, and autocast's cast back to bf16).

Over 400 lines: the cache's key, memory cap, build in chunks and the training views on cached
features must agree exactly, so they stay together.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator, cast

import torch

from autotransfer.backbones import run_groups
from autotransfer.core.errors import InvalidValueError

__all__ = [
    "PrefixCache",
    "CachedPrefix",
    "prefix_digest",
    "data_identity",
    "view_seed",
    "native_cpu_bf16",
    "WORKERS_PER_DEVICE_ENV",
]

#: Environment variable naming how many worker processes share this process's GPU; set for each
#: worker by ``search.workers.launch_local_workers``, read by ``PrefixCache.cap_bytes``.
WORKERS_PER_DEVICE_ENV = "AUTOTRANSFER_WORKERS_PER_DEVICE"

_POOL_RTOL = 1e-4


def native_cpu_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX tiles or AVX512-BF16), where
    oneDNN runs bf16 inference faster than fp32; False when unknown."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # private helpers: absent in other torch builds
        return False


def view_seed(seed: int, view: int) -> int:
    """The generator seed of augmentation view ``view`` for a run seeded by ``seed``."""
    digest = hashlib.blake2b(f"autotransfer-view:{seed}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class CachedPrefix:
    """Stored prefix outputs for one (weights, f, data, views) key.

    Attributes:
        freeze: ``f``, the number of groups run to produce the features.
        train: ``(V, N, *shape)`` features of ``V`` augmented views of the ``N`` training
            images; slot ``v`` is valid once ``built[v]`` is True.
        built: ``V`` flags: which views have been computed.
        train_labels: ``(N,)`` int64 labels on the same device.
        val: ``(M, *shape)`` features of the plain validation images, or ``None``.
        val_labels: ``(M,)`` labels, or ``None``.
        pooled: True when ``shape`` is ``(C, 1, 1)``: globally average-pooled final maps.
        augment / seed: how the views are drawn (``view_seed(seed, v)``).
        bf16: whether the prefix runs under bf16 autocast when building.
        channels_last: maps ``(C, H, W)`` are stored in channels_last memory (``train`` and
            ``val`` are views of ``(..., H, W, C)`` memory).
        build_time_s: seconds spent computing features so far (all views and val).
        hits: how many trials have used it after the one that created it.
    """

    key: tuple
    freeze: int
    train: torch.Tensor
    built: list[bool]
    train_labels: torch.Tensor
    val: torch.Tensor | None
    val_labels: torch.Tensor | None
    pooled: bool
    augment: bool
    seed: int
    bf16: bool = False
    channels_last: bool = False
    build_time_s: float = 0.0
    hits: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def views(self) -> int:
        return self.train.shape[0]

    @property
    def num_train(self) -> int:
        return self.train.shape[1]

    @property
    def nbytes(self) -> int:
        total = self.train.numel() * self.train.element_size()
        if self.val is not None:
            total += self.val.numel() * self.val.element_size()
        return total

    def step_dtype(self, amp: bool) -> torch.dtype:
        """The dtype a trial step consumes the features in: the bfloat16 store as it is under
        bf16 autocast (``amp``), else float32."""
        return torch.bfloat16 if amp and self.train.dtype == torch.bfloat16 else torch.float32

    def batch(self, idx: torch.Tensor, view_idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Features of images ``idx`` ``(B,)`` at views ``view_idx`` ``(B,)``: ``(B, *shape)`` in
        ``dtype`` and the stored layout (the gather, plus one conversion when ``dtype`` differs).

        The views must have been built (``PrefixCache.ensure``)."""
        return self._as(self.train[view_idx, idx], dtype)

    def val_batches(self, batch_size: int, dtype: torch.dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(features (B, *shape), labels (B,))`` over the whole validation set, in order."""
        if self.val is None or self.val_labels is None:
            raise InvalidValueError("this cache entry has no validation features")
        for start in range(0, self.val.shape[0], batch_size):
            yield self._as(self.val[start : start + batch_size], dtype), self.val_labels[start : start + batch_size]

    def _as(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x`` ``(B, *shape)`` in ``dtype`` and the stored layout, in one pass at most (none when
        both already hold: ``x`` itself)."""
        layout = torch.channels_last if self.channels_last and x.dim() == 4 else torch.preserve_format
        return x.to(dtype, memory_format=layout)


class PrefixCache:
    """An LRU of ``CachedPrefix`` entries under a byte cap, kept alive across trials.

    Args:
        max_bytes: cap on the summed size of all entries; ``None`` = auto (``cap_bytes``: on
            CUDA from the device's free memory and the workers sharing it, on CPU a quarter of
            physical RAM, at most 4 GiB).
        dtype: storage dtype; ``None`` = bfloat16 under bf16 autocast (what the groups compute
            in anyway), else float16 (bfloat16 where float16 overflows).
        chunk_size: images per forward pass while building.
        bf16_build: run the frozen prefix under bf16 autocast while building; ``None`` = auto
            (when the trial uses bf16 autocast, or on a CPU with ``native_cpu_bf16``, unless the
            storage dtype is float32).
        workers_per_device: processes sharing this GPU; ``None`` = ``$AUTOTRANSFER_WORKERS_PER_DEVICE``
            (set by ``search.workers.launch_local_workers``), else 1.
    """

    def __init__(
        self,
        max_bytes: int | None = None,
        dtype: torch.dtype | None = None,
        chunk_size: int = 128,
        bf16_build: bool | None = None,
        workers_per_device: int | None = None,
    ):
        if workers_per_device is not None and workers_per_device < 1:
            raise InvalidValueError(f"workers_per_device must be >= 1, but got {workers_per_device!r}")
        self.workers_per_device = workers_per_device
        if max_bytes is not None and max_bytes <= 0:
            raise InvalidValueError(f"max_bytes must be > 0, but got {max_bytes!r}")
        if chunk_size < 1:
            raise InvalidValueError(f"chunk_size must be >= 1, but got {chunk_size!r}")
        self.max_bytes = max_bytes
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.bf16_build = bf16_build
        self._entries: OrderedDict[tuple, CachedPrefix] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by all entries."""
        return sum(e.nbytes for e in self._entries.values())

    def entries(self) -> list[CachedPrefix]:
        """The entries, least recently used first."""
        return list(self._entries.values())

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    def sharing_workers(self) -> int:
        """How many worker processes share this process's GPU (at least 1)."""
        if self.workers_per_device is not None:
            return self.workers_per_device
        try:
            return max(1, int(os.environ.get(WORKERS_PER_DEVICE_ENV, "1")))
        except ValueError:
            return 1

    def cap_bytes(self, device: torch.device) -> int:
        """The byte cap in force for entries on ``device``.

        On CUDA: the smaller of this worker's share of 30% of the device's memory
        (``0.3 * total / workers``, so k workers' caches together stay under 30%) and half of
        the memory this process could still use (free on the device, plus what this cache and
        the allocator's idle reserve hold), leaving the rest for the trial's activations.
        """
        if self.max_bytes is not None:
            return self.max_bytes
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            held = sum(e.nbytes for e in self._entries.values() if e.train.device.type == "cuda")
            usable = free + max(0, idle) + held
            return int(max(0, min(0.3 * total / self.sharing_workers(), 0.5 * usable)))
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            ram = 8 << 30
        return int(min(ram // 4, 4 << 30))

    def builds_in_bf16(self, device: torch.device, amp: bool, dtype: torch.dtype) -> bool:
        """Whether an entry on ``device`` for a trial with ``amp``, stored as ``dtype``, is built
        under bf16 autocast."""
        if self.bf16_build is not None:
            return self.bf16_build
        if dtype == torch.float32:
            return False
        return amp or (device.type == "cpu" and native_cpu_bf16())

    def get(
        self,
        backbone,
        freeze: int,
        train,
        val=None,
        *,
        views: int,
        seed: int,
        augment: bool,
        amp: bool = False,
        channels_last: bool = False,
    ) -> tuple[CachedPrefix | None, str | None]:
        """The entry for this key, created if missing: ``(entry, None)``, or ``(None, note)`` when
        it would not fit under the cap (the caller then trains uncached). A new entry has its
        validation features computed; training views are computed by ``ensure`` when needed.

        Args:
            backbone: a chaining ``Backbone`` (``backbone.chain``) whose groups ``0..freeze-1``
                are frozen.
            freeze: ``f`` in ``[1, G]``.
            train: training ``DeviceBatches``; ``val``: validation ``DeviceBatches`` or ``None``.
            views: ``V`` (forced to 1 when ``augment`` is False).
            seed: seeds the view bank (view ``v`` uses ``view_seed(seed, v)``).
        """
        if not getattr(backbone, "chain", False):
            raise InvalidValueError(f"backbone {backbone.spec!r} does not chain its groups; it cannot be cached")
        if not 1 <= freeze <= backbone.num_groups:
            raise InvalidValueError(f"freeze must be in [1, {backbone.num_groups}], but got {freeze!r}")
        views = views if augment else 1
        device = train.images.device
        dtype = self.dtype or (torch.bfloat16 if amp else torch.float16)
        bf16 = self.builds_in_bf16(device, amp, dtype)
        key = (
            backbone.spec,
            prefix_digest(backbone, freeze),
            freeze,
            views,
            seed if augment else None,
            augment,
            _resolution(train),
            data_identity(train),
            None if val is None else data_identity(val),
            str(dtype),
            str(device),
            bf16,
        )
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            entry.hits += 1
            self.hits += 1
            return entry, None
        self.misses += 1

        model = backbone.model
        was_training = model.training
        model.eval()
        try:
            probe = train.plain(torch.arange(min(2, len(train)), device=device))
            pooled = freeze == backbone.num_groups and _head_pools(backbone, probe, freeze)
            with torch.no_grad():
                shape = tuple(self._prefix(backbone, probe, freeze, pooled, bf16, channels_last).shape[1:])
            per_image = _numel(shape) * torch.empty((), dtype=dtype).element_size()
            need = per_image * (views * len(train) + (0 if val is None else len(val)))
            cap = self.cap_bytes(device)
            if need > cap:
                return None, (
                    f"frozen-prefix cache skipped: f={freeze}, {views} view(s) of {len(train)} "
                    f"images need {need / 2**20:.0f} MiB, over the {cap / 2**20:.0f} MiB cap; trained uncached"
                )
            while self._entries and self.nbytes + need > cap:
                self._entries.popitem(last=False)
            start = time.perf_counter()
            nhwc = channels_last and len(shape) == 3 and not pooled
            entry = CachedPrefix(
                key=key,
                freeze=freeze,
                train=_storage((views, len(train)), shape, dtype, device, nhwc),
                built=[False] * views,
                train_labels=train.labels.to(device=device, dtype=torch.long),
                val=None,
                val_labels=None if val is None else val.labels.to(device=device, dtype=torch.long),
                pooled=pooled,
                augment=augment,
                seed=seed,
                bf16=bf16,
                channels_last=nhwc,
            )
            if bf16 and not amp:
                entry.notes.append("frozen prefix computed under bf16 autocast (this CPU has native bf16)")
            if val is not None:
                entry.val = _storage((len(val),), shape, dtype, device, nhwc)
                self._fill(entry, "val", backbone, val.plain, len(val), channels_last)
            entry.build_time_s += time.perf_counter() - start
        finally:
            model.train(was_training)
        self._entries[key] = entry
        return entry, None

    def ensure(self, entry: CachedPrefix, views, backbone, train, *, channels_last: bool = False) -> float:
        """Compute the views in ``views`` (ints) of ``entry`` that are not built yet; returns
        the seconds spent. ``backbone`` and ``train`` must be those the entry was keyed on
        (same frozen prefix weights, same data). The build precision is the entry's (``entry.bf16``)."""
        todo = sorted({int(v) for v in views if not entry.built[int(v)]})
        if not todo:
            return 0.0
        start = time.perf_counter()
        model = backbone.model
        was_training = model.training
        model.eval()
        try:
            for v in todo:
                if entry.augment:
                    gen = torch.Generator(device=train.images.device).manual_seed(view_seed(entry.seed, v))
                    make = lambda idx, g=gen: train.augment(idx, g)  # noqa: E731
                else:
                    make = train.plain
                self._fill(entry, v, backbone, make, len(train), channels_last)
                entry.built[v] = True
        finally:
            model.train(was_training)
        spent = time.perf_counter() - start
        entry.build_time_s += spent
        return spent

    # -- building ---------------------------------------------------------------------------

    def _prefix(self, backbone, x, freeze, pooled, bf16, channels_last) -> torch.Tensor:
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.no_grad(), ctx:
            out = run_groups(backbone, x, 0, freeze)
        if pooled:
            out = out.float().mean(dim=(2, 3), keepdim=True)
        return out

    def _fill(self, entry: CachedPrefix, slot, backbone, make_batch, count: int, channels_last: bool) -> None:
        """Write the prefix outputs of ``make_batch(idx)`` for all ``count`` images into
        ``entry.val`` (``slot == "val"``) or ``entry.train[slot]``, switching the entry's
        storage to bfloat16 if float16 overflows."""
        device = entry.train.device
        for lo in range(0, count, self.chunk_size):
            idx = torch.arange(lo, min(lo + self.chunk_size, count), device=device)
            out = self._prefix(backbone, make_batch(idx), entry.freeze, entry.pooled, entry.bf16, channels_last)
            if entry.train.dtype == torch.float16 and not bool(torch.isfinite(out.to(torch.float16)).all()):
                # lossless in range for what is stored so far (all finite float16)
                entry.train = entry.train.to(torch.bfloat16)
                if entry.val is not None:
                    entry.val = entry.val.to(torch.bfloat16)
                entry.notes.append(f"float16 overflowed in the f={entry.freeze} prefix outputs; stored as bfloat16")
            target = cast(torch.Tensor, entry.val) if slot == "val" else entry.train[slot]  # "val": entry has one
            target[lo : lo + len(idx)] = out.to(target.dtype)


def _storage(
    lead: tuple[int, ...], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """An empty ``(*lead, *shape)`` tensor; with ``channels_last`` (``shape`` = ``(C, H, W)``) a view
    of ``(*lead, H, W, C)`` memory, so that every ``(C, H, W)`` slice is channels_last."""
    if not channels_last:
        return torch.empty((*lead, *shape), dtype=dtype, device=device)
    c, h, w = shape
    k = len(lead)
    return torch.empty((*lead, h, w, c), dtype=dtype, device=device).permute(*range(k), k + 2, k, k + 1)


def _head_pools(backbone, probe: torch.Tensor, freeze: int) -> bool:
    """True when ``forward_head`` gives the same logits on the final maps and on their global
    average (``(B, C, 1, 1)``), checked with a temporarily randomised head (the real head is
    zero-initialised, which would make any check pass)."""
    with torch.no_grad():
        maps = run_groups(backbone, probe.float(), 0, freeze)
        if maps.dim() != 4:
            return False
        head = backbone.model.get_submodule(backbone.head_name)
        saved = {k: v.clone() for k, v in head.state_dict().items()}
        gen = torch.Generator(device="cpu").manual_seed(1234)
        try:
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen).to(p))
            full = backbone.forward_head(maps).float()
            pooled = backbone.forward_head(maps.mean(dim=(2, 3), keepdim=True)).float()
        except Exception:
            return False
        finally:
            head.load_state_dict(saved)
        if full.shape != pooled.shape:
            return False
        scale = full.abs().max().clamp_min(1e-6)
        return bool(((full - pooled).abs().max() / scale) < _POOL_RTOL)


def prefix_digest(backbone, freeze: int) -> str:
    """A digest of the parameters and buffers of depth groups ``0..freeze-1``."""
    digest = hashlib.blake2b(digest_size=16)
    model = backbone.model
    for group in backbone.groups[:freeze]:
        for name in group.modules:
            module = model.get_submodule(name) if name else model
            for key, value in module.state_dict().items():
                digest.update(f"{name}.{key}:{tuple(value.shape)}:{value.dtype}".encode())
                digest.update(
                    value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                    if value.numel()
                    else b""
                )
    return digest.hexdigest()


_IDENTITIES: dict[int, str] = {}
_TOKENS = itertools.count()


def data_identity(batches) -> str:
    """The prefix cache's key for the data of a ``DeviceBatches``, read without touching its
    images (no host copy, no pass over the data).

    With a ``fingerprint`` (the caller's content key of images and labels, e.g. the split's
    ``ImageDataset.fingerprint``): that, the stored shape ``(N, 3, H, W)`` and the preprocessing
    and augmentation settings, so equal data in two objects share entries. Without one: a token
    unique to the object for its lifetime (images are treated as immutable), so another object
    never shares its entries even when its data is equal."""
    own = getattr(batches, "fingerprint", None)
    described = f"shape={tuple(batches.images.shape)}|{_settings(batches)}"
    if isinstance(own, str) and own:
        return f"{own}|{described}"
    token = _IDENTITIES.get(id(batches))
    if token is None:
        token = f"object-{os.getpid()}-{next(_TOKENS)}"
        try:
            weakref.finalize(batches, _IDENTITIES.pop, id(batches), None)
        except TypeError:  # not weak-referenceable: no memo (ids may be reused), so never a hit
            return f"{token}|{described}"
        _IDENTITIES[id(batches)] = token
    return f"{token}|{described}"


def _settings(batches) -> str:
    parts: list[Any] = []
    for name in ("out_size", "mean", "std", "_mul", "_add", "flip", "scale", "ratio", "interpolation"):
        value = getattr(batches, name, None)
        if isinstance(value, torch.Tensor):
            value = tuple(round(float(v), 6) for v in value.flatten().tolist())
        parts.append(f"{name}={value!r}")
    return ";".join(parts)


def _resolution(batches) -> int | None:
    return getattr(batches, "out_size", None)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
