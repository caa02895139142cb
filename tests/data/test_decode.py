"""to_rgb: every Pillow mode becomes (H, W, 3) uint8."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from autotransfer.data.decode import decode_bytes, to_rgb


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("1", 1, [255] * 3),
        ("L", 77, [77] * 3),
        ("LA", (77, 0), [0] * 3),
        ("I", 200, [200] * 3),  # 8-bit data in a 32-bit image stays
        ("I", 65535, [255] * 3),  # 16-bit data is scaled
        ("I;16", 2570, [10] * 3),  # 16-bit mode always scales, even when dark
        ("F", 0.5, [128] * 3),  # float in 0..1
        ("CMYK", (0, 0, 0, 0), [255] * 3),
        ("RGBA", (10, 20, 30, 255), [10, 20, 30]),
        ("YCbCr", (128, 128, 128), [128] * 3),
    ],
)
def test_modes(mode, value, expected):
    image = Image.new(mode, (3, 2), value)
    array = to_rgb(image)
    assert array.shape == (2, 3, 3) and array.dtype == np.uint8
    assert np.abs(array[0, 0].astype(int) - expected).max() <= 1


def test_palette_with_transparency_and_exif_rotation():
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    palette.info["transparency"] = 1
    assert to_rgb(palette)[0, 0].tolist() == [0, 0, 0]
    tall = Image.new("RGB", (4, 2), (9, 9, 9))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    buffer = io.BytesIO()
    tall.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_bytes(buffer.getvalue()).shape == (4, 2, 3)


def test_non_images_raise():
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError: what the folder loader catches
        decode_bytes(b"hello world")
    gif = _png(Image.new("P", (5, 4), 3), "GIF")
    assert decode_bytes(gif).shape == (4, 5, 3)
