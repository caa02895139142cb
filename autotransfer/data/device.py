"""Device-resident images and batched on-device augmentation for the trial loop."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autotransfer.core.errors import InvalidValueError

__all__ = ["DeviceBatches"]

_ATTEMPTS = 10  # random-resized-crop tries per sample before the centre-crop fallback


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


class DeviceBatches:
    """Images and labels kept on one device; batches are cropped, flipped, resized and
    normalised there, for the whole batch at once.

    Args:
        images: ``(N, S, S, 3)`` uint8 (``H != W`` works too).
        labels: ``(N,)`` integer class indices, or ``None``.
        device: where the data and every batch live (``"cpu"``, ``"cuda"``...).
        out_size: side of the batches ``augment``/``plain`` return.
        mean, std: per-channel preprocessing of the backbone: ``(x/255 - mean) / std``.
        flip: draw random horizontal flips in ``augment``.
        scale: range of the crop's area as a fraction of the image (RandomResizedCrop).
        ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        channels_last: keep the images in channels_last memory (the ``(N, S, S, 3)`` upload
            itself, no second NCHW copy) and return batches in ``torch.channels_last`` memory
            format: what the trial loop, the estimator and prediction consume, so they convert
            nothing.
        fingerprint: the caller's content key of ``images`` and ``labels`` (e.g. the split's
            ``ImageDataset.fingerprint``); with the stored shape and the preprocessing it keys
            the prefix cache (``train.prefix_cache.data_identity``). ``None``: the object is its
            own key (equal data in two objects then share nothing).

    Attributes:
        images: ``(N, 3, S, S)`` uint8 tensor on ``device``; with ``channels_last`` a view of
            ``(N, S, S, 3)`` memory. Treated as immutable.
        labels: ``(N,)`` int64 tensor on ``device`` (``None`` when unlabelled).
        mean, std: the per-channel preprocessing, as given.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        *,
        device: str | torch.device,
        out_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        channels_last: bool = False,
        fingerprint: str | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise InvalidValueError(
                f"images must be an (N, S, S, 3) uint8 array but got shape {images.shape} dtype {images.dtype}"
            )
        if len(images) == 0:
            raise InvalidValueError("images must hold at least one image but got an empty array")
        if labels is not None and len(labels) != len(images):
            raise InvalidValueError(f"got {len(images)} images but {len(labels)} labels")
        if int(out_size) < 1:
            raise InvalidValueError(f"out_size must be a positive integer but got {out_size!r}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise InvalidValueError(f"scale must satisfy 0 < low <= high <= 1 but got {scale!r}")
        if not (0 < ratio[0] <= ratio[1]):
            raise InvalidValueError(f"ratio must satisfy 0 < low <= high but got {ratio!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise InvalidValueError(f"mean and std must be 3 numbers, std > 0, but got {mean!r}, {std!r}")
        self.device = torch.device(device)
        self.out_size = int(out_size)
        self.flip = bool(flip)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.channels_last = bool(channels_last)
        self.fingerprint = fingerprint
        if not images.flags.writeable or not images.flags.c_contiguous:
            images = np.array(images, copy=True)
        nhwc = torch.from_numpy(images).to(self.device)
        # channels_last: keep the (N, H, W, 3) upload as it is (no second, NCHW copy of the data)
        # and gather from it (index_select on the permuted view would transpose into NCHW anyway)
        self._nhwc = nhwc if self.channels_last else None
        self.images = nhwc.permute(0, 3, 1, 2)  # channels_last memory, (N, 3, H, W) view
        if not self.channels_last:
            self.images = self.images.contiguous()
        self.labels = (
            None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)
        )
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._mul = 1.0 / (255.0 * std_t)
        self._add = -mean_t / std_t
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(v) for v in std)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the stored images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def _check_generator(self, generator: torch.Generator) -> None:
        if not _same_device(generator.device, self.device):
            raise InvalidValueError(
                f"generator must live on the data's device {self.device} but is on "
                f"{generator.device}; create it with torch.Generator(device={str(self.device)!r})"
            )

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float32 NCHW copy of ``images[idx]``. From ``(N, H, W, 3)`` storage the
        uint8-to-float pass also transposes (no extra copy): resampling and the per-channel
        normalisation run fastest on NCHW (CPU, 32 x 224 px: ``grid_sample`` 18 vs 21 ms, the
        resize 19 vs 30 ms, normalisation 1 vs 7 ms; a 3-wide channel dim defeats vectorisation)."""
        if self._nhwc is not None:
            return (
                self._nhwc.index_select(0, idx)
                .permute(0, 3, 1, 2)
                .to(torch.float32, memory_format=torch.contiguous_format)
            )
        return self.images.index_select(0, idx).float()

    def _finish(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalise the NCHW ``batch`` in place and hand it over in the output memory format:
        with ``channels_last`` this is the one layout conversion per batch (``grid_sample``
        writes NCHW), and the trial step's own ``contiguous(channels_last)`` is then a no-op."""
        batch = batch.mul_(self._mul).add_(self._add)
        if self.channels_last:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch.contiguous()

    def crop_params(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``(count, 2, 3)`` axis-aligned affine matrices (``align_corners=False``
        convention): a random-resized crop, mirrored when flipped, per sample.

        Like torchvision's RandomResizedCrop (10 tries, then the largest centred crop with
        an allowed ratio), but with continuous crop boxes and all tries drawn at once."""
        height, width = self.image_size
        draws = torch.rand((count, 2 * _ATTEMPTS + 3), generator=generator, device=self.device)
        low_s, high_s = self.scale
        area = low_s + (high_s - low_s) * draws[:, :_ATTEMPTS]
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[:, _ATTEMPTS : 2 * _ATTEMPTS])
        # crop width / height as fractions of the image's width / height
        w_frac = torch.sqrt(area * aspect * (height / width))
        h_frac = torch.sqrt(area / aspect * (width / height))
        valid = (w_frac <= 1.0) & (h_frac <= 1.0)
        first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
        found = valid.any(dim=1)
        w_pick = w_frac.gather(1, first).squeeze(1)
        h_pick = h_frac.gather(1, first).squeeze(1)
        # fallback (torchvision): the largest centred crop whose ratio is within range
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fb_w, fb_h = 1.0, (width / self.ratio[0]) / height
        elif in_ratio > self.ratio[1]:
            fb_w, fb_h = (height * self.ratio[1]) / width, 1.0
        else:
            fb_w, fb_h = 1.0, 1.0
        w_pick = torch.where(found, w_pick, torch.full_like(w_pick, fb_w))
        h_pick = torch.where(found, h_pick, torch.full_like(h_pick, fb_h))
        pos_x, pos_y = draws[:, 2 * _ATTEMPTS], draws[:, 2 * _ATTEMPTS + 1]
        half = torch.full_like(w_pick, 0.5)
        centre_x = torch.where(found, w_pick / 2 + pos_x * (1 - w_pick), half)
        centre_y = torch.where(found, h_pick / 2 + pos_y * (1 - h_pick), half)
        sign = torch.ones_like(w_pick)
        if self.flip:
            sign = torch.where(draws[:, 2 * _ATTEMPTS + 2] < 0.5, -sign, sign)
        theta = torch.zeros((count, 2, 3), dtype=torch.float32, device=self.device)
        theta[:, 0, 0] = w_pick * sign
        theta[:, 0, 2] = 2 * centre_x - 1
        theta[:, 1, 1] = h_pick
        theta[:, 1, 2] = 2 * centre_y - 1
        return theta

    def sampling_grid(self, theta: torch.Tensor) -> torch.Tensor:
        """``(B, out, out, 2)`` grid for axis-aligned ``theta`` ``(B, 2, 3)``; equal to
        ``F.affine_grid(theta, (B, 3, out, out), align_corners=False)`` (its base grid is
        separable, so two broadcast multiply-adds replace the batched matmul: ~3x faster
        on CPU)."""
        count, out = theta.shape[0], self.out_size
        base = (torch.arange(out, dtype=torch.float32, device=theta.device) * 2 + 1) / out - 1
        coef = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1)
        grid_x = torch.addcmul(coef[:, 0, 2], coef[:, 0, 0], base[None, None, :])
        grid_y = torch.addcmul(coef[:, 1, 2], coef[:, 1, 1], base[None, :, None])
        return torch.stack((grid_x.expand(count, out, out), grid_y.expand(count, out, out)), dim=-1)

    @torch.no_grad()
    def augment(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(B, 3, out, out)`` float32: random-resized crop, optional horizontal flip and
        normalisation of ``images[idx]``, with one sampling grid + ``grid_sample``
        (bilinear) for the whole batch. Crop parameters come from ``generator`` (on the device)."""
        self._check_generator(generator)
        idx = idx.to(self.device)
        batch = self._gather(idx)
        theta = self.crop_params(int(idx.numel()), generator)
        grid = self.sampling_grid(theta)
        out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self._finish(out)

    @torch.no_grad()
    def plain(self, idx: torch.Tensor) -> torch.Tensor:
        """``(B, 3, out, out)`` float32: the whole image resized (bilinear, antialiased when
        shrinking) and normalised: the evaluation view."""
        idx = idx.to(self.device)
        batch = self._gather(idx)
        if self.image_size != (self.out_size, self.out_size):
            batch = F.interpolate(
                batch,
                size=(self.out_size, self.out_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self._finish(batch)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(x, y)`` over all images in order, plain view; ``y`` is None when unlabelled."""
        if int(batch_size) < 1:
            raise InvalidValueError(f"batch_size must be a positive integer but got {batch_size!r}")
        for start in range(0, len(self), int(batch_size)):
            idx = torch.arange(start, min(start + int(batch_size), len(self)), device=self.device)
            yield self.plain(idx), (None if self.labels is None else self.labels[idx])


class EpochSampler:
    """Batches of indices walking through a fresh random permutation per epoch (every image
    once per epoch). The state lives here, not in the data, so each trial gets its own sampler
    and equal seeds give equal batches.

    Args:
        n: number of images.
        generator: the ``torch.Generator`` (on ``device``) drawing the permutations.
        device: where the indices live.

    Attributes:
        epoch: the 0-based epoch of the last index drawn (-1 before the first draw).
    """

    def __init__(self, n: int, generator: torch.Generator, device: torch.device | str) -> None:
        if int(n) < 1:
            raise InvalidValueError(f"n must be a positive integer but got {n!r}")
        self.n, self.generator, self.device = int(n), generator, torch.device(device)
        self.perm: torch.Tensor | None = None
        self.pos = 0
        self.epoch = -1

    def next(self, batch_size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """``(indices (B,), [(epoch, count), ...])``: the int64 indices and the 0-based epoch(s)
        they belong to, in order (a batch straddles two epochs at an epoch boundary)."""
        if int(batch_size) < 1:
            raise InvalidValueError(f"batch_size must be a positive integer but got {batch_size!r}")
        parts, epochs, need = [], [], int(batch_size)
        while need > 0:
            if self.perm is None or self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.generator, device=self.device)
                self.pos = 0
                self.epoch += 1
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            epochs.append((self.epoch, take))
            self.pos += take
            need -= take
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), epochs
