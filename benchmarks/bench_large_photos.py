"""Peak host memory loading a folder of large JPEGs: full-size decode vs reduced decode.

Writes N photo-like JPEGs (default 3000x2000, about 6 MP) under a temporary folder, then loads
the folder in two fresh processes, so each peak is its own:

- ``old``: every image decoded at full size (``?decode=0``), as before issue 19 §6;
- ``new``: decoded at the default ``DECODE_SIDE`` (JPEG ``draft`` + resize, shorter side 512).

Both then build the study's array at ``--resolution``. Prints peak RSS (``ru_maxrss``) of each,
its rise over the RSS after imports, and the ratios. Not a timed test: the numbers depend on the machine.

    .venv/bin/python benchmarks/bench_large_photos.py --n 40
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_photos(root: Path, n: int, width: int, height: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(1, 8, 3)
        array = np.stack(
            [127 + 100 * np.sin(2 * np.pi * f[c] * (x / width + y / height) + c) for c in range(3)], 2
        ).astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:04d}.jpg", quality=90)


def child(spec: str, resolution: int) -> None:
    from autotransfer.data import load_dataset
    from autotransfer.data.cache import to_array

    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after imports
    start = time.perf_counter()
    ds = load_dataset(spec, cache=False)
    array = to_array(ds, resolution, cache=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    held = sum(np.asarray(im).nbytes for im in ds.images) / 2**20
    print(f"{peak_mib:.1f} {peak_mib - base_mib:.1f} {held:.1f} {time.perf_counter() - start:.2f} {array.shape[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="number of JPEGs")
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        write_photos(root, args.n, args.width, args.height)
        env = dict(os.environ)
        results = {}
        for name, spec in (("old", f"{root}?decode=0"), ("new", str(root))):
            out = subprocess.run(
                [sys.executable, __file__, "--child", spec, str(args.resolution)],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout.split()
            results[name] = [float(v) for v in out]
    print(f"{args.n} JPEGs of {args.width}x{args.height}, study array at {args.resolution} px")
    print(f"{'':6}{'peak RSS MiB':>14}{'above imports':>15}{'images MiB':>12}{'seconds':>9}")
    for name, (peak, above, held, secs, _) in results.items():
        print(f"{name:6}{peak:14.1f}{above:15.1f}{held:12.1f}{secs:9.2f}")
    old, new = results["old"], results["new"]
    print(f"ratio old/new: peak RSS {old[0] / new[0]:.2f}x, images held {old[2] / new[2]:.1f}x")


if __name__ == "__main__":
    main()
