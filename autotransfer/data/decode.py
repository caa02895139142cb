"""Decode any Pillow-readable image into an RGB uint8 array (grey, RGBA, palette, 16-bit...)."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["to_rgb", "decode_bytes"]


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
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def decode_bytes(data: bytes) -> np.ndarray:
    """Decode an encoded image file's bytes to ``(H, W, 3)`` uint8; raises on non-images."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "truncated"/"palette" chatter
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image)
