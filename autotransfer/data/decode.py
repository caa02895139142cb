"""Decode any Pillow-readable image into an RGB uint8 array (grey, RGBA, palette, 16-bit...)."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["to_rgb", "decode_bytes", "shrink_to_side"]


def _scale_to_uint8(array: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """Map an integer or float single-channel array onto 0..255 uint8."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 1.0 if finite.size and finite.max() <= 1.0 else 255.0
        return np.clip(np.rint(finite * (255.0 / top)), 0, 255).astype(np.uint8)
    # "I;16*" modes always scale by 257 (65535 -> 255); a 32-bit "I" image (which is how
    # some 16-bit PNGs open) scales too unless its values already fit 8 bits.
    wide = array.astype(np.int64)
    if sixteen_bit or (wide.size and wide.max() > 255):
        wide = (wide + 128) // 257
    return np.clip(wide, 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array for any Pillow image.

    Grey, palette, CMYK... are converted; alpha (RGBA, LA, palette transparency) is
    composited on black; 16-bit and 32-bit integer grey is scaled to 8 bit; float grey in
    0..1 or 0..255 is scaled; EXIF orientation is applied; multi-frame files give frame 0.
    """
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not cost the image
        pass
    mode = image.mode
    if mode in ("1", "L"):
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode.startswith("I") or mode == "F":
        grey = _scale_to_uint8(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
        if grey.ndim == 3:  # e.g. "I;16" read as (H, W, 1)
            grey = grey[:, :, 0]
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _draft_request(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The (width, height) to ask Pillow's JPEG ``draft`` for: the image scaled so its
    shorter side is ``max_side`` (``draft`` keeps both sides at least this large)."""
    width, height = size
    scale = max_side / min(width, height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def shrink_to_side(array: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 with the shorter side brought down to ``max_side`` (Pillow bicubic,
    antialiased, after an integer box ``reduce`` for large factors); smaller images unchanged."""
    height, width = array.shape[:2]
    short = min(height, width)
    if short <= max_side:
        return array
    scale = max_side / short
    new_w = max(max_side, round(width * scale))
    new_h = max(max_side, round(height * scale))
    pil = Image.fromarray(np.ascontiguousarray(array))
    pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(pil, dtype=np.uint8).copy()


def decode_bytes(data: bytes, max_side: int | None = None) -> np.ndarray:
    """Decode an encoded image file's bytes to ``(H, W, 3)`` uint8; raises on non-images.

    With ``max_side``, the shorter side comes back at most ``max_side`` pixels: a JPEG is
    decoded at a reduced scale by libjpeg (Pillow's ``draft``, 1/2 to 1/8, never below
    ``max_side``), so the full-size pixels never exist; any image is then resized down.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "truncated"/"palette" chatter
        with Image.open(io.BytesIO(data)) as image:
            if max_side and image.format == "JPEG" and min(image.size) > max_side:
                image.draft("RGB", _draft_request(image.size, max_side))
            image.load()
            array = to_rgb(image)
    return shrink_to_side(array, max_side) if max_side else array
