"""Peak host memory of ``autotransfer predict`` on a folder of large JPEGs, at two folder sizes.

Writes a model folder (``--model`` fine-tuned nowhere: its pretrained weights and a random head,
written at ``--resolution``) and ``--sizes`` folders of ``--width`` x ``--height`` JPEGs of noise
(``--distinct`` encoded images, hard-linked to the count: ``predict`` caches nothing, so the
content repeating changes nothing), then runs ``autotransfer predict MODEL FOLDER --format csv``
in a fresh process per folder, so each peak is its own. Prints the peak RSS (``ru_maxrss``) of
each, its rise over the RSS after imports, the progress calls, and the ratio of the peaks.

Before issue 31 §3 ``predict`` decoded every image at full size before the first batch (2000x1500:
9 MB each), so the peak grew with the number of images; now it streams batch by batch through the
bounded decoder and the ratio stays near 1. Not a timed test: the numbers depend on the machine.

    .venv/bin/python benchmarks/bench_predict_memory.py --sizes 60,600
    PYTHONPATH=OTHER_CHECKOUT .venv/bin/python benchmarks/bench_predict_memory.py --sizes 20,60   # another version
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_photos(folder: Path, count: int, width: int, height: int, distinct: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    originals = []
    for i in range(min(distinct, count)):
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
        originals.append(path)
    for i in range(len(originals), count):
        os.link(originals[i % len(originals)], folder / f"{i:04d}.jpg")


def write_model(folder: Path, model: str, resolution: int) -> None:
    import torch

    from autotransfer.backbones import create_backbone
    from autotransfer.backbones.model_dir import write_model_dir

    torch.manual_seed(0)
    backbone = create_backbone(model, num_classes=3)
    with torch.no_grad():
        backbone.model.get_submodule(backbone.head_name).weight.normal_(0, 0.05)
    write_model_dir(backbone, folder, label_names=["a", "b", "c"], input_size=resolution)


def child(model: str, images: str) -> None:
    """Run ``predict`` in this process (stdout to /dev/null) and print its peak RSS."""
    import timm  # noqa: F401 - imported before the baseline, as predict imports them
    import torch  # noqa: F401

    import autotransfer.handback.predict as predict_module
    from autotransfer import cli
    from autotransfer.data import folder  # noqa: F401

    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, after imports
    calls: list[int] = []
    real = predict_module.Predictor.predict_files

    def counted(self, paths, *, progress=None):
        def tick(done, total):
            calls.append(done)
            if progress is not None:
                progress(done, total)

        return real(self, paths, progress=tick)

    predict_module.Predictor.predict_files = counted  # type: ignore[method-assign]
    start = time.perf_counter()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        try:
            cli.app(["predict", model, images, "--format", "csv", "--device", "cpu"], prog_name="autotransfer")
        except SystemExit as done:
            if done.code:
                raise
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first = calls[0] if calls else 0
    print(f"{peak_mib:.1f} {peak_mib - base_mib:.1f} {time.perf_counter() - start:.2f} {len(calls)} {first}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="60,600", help="comma-separated image counts (two or more)")
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--distinct", type=int, default=10, help="distinct JPEGs encoded; the rest are hard links")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [int(v) for v in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_model(root / "model", args.model, args.resolution)
        results = {}
        for count in sizes:
            folder = root / f"photos-{count}"
            write_photos(folder, count, args.width, args.height, args.distinct)
            env = {**os.environ, "AUTOTRANSFER_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(root / "model"), str(folder)],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout.split()
            results[count] = [float(v) for v in out]
    print(
        f"predict on JPEGs of {args.width}x{args.height} (noise), {args.model} at {args.resolution} px, CPU,"
        f" each run in a fresh process"
    )
    print(f"{'images':>7}{'peak RSS MiB':>14}{'above imports':>15}{'seconds':>9}{'progress calls':>16}{'first at':>10}")
    for count, (peak, above, secs, calls, first) in results.items():
        print(f"{count:7d}{peak:14.1f}{above:15.1f}{secs:9.2f}{int(calls):16d}{int(first):10d}")
    low, high = results[sizes[0]], results[sizes[-1]]
    print(
        f"ratio {sizes[-1]}/{sizes[0]} images: peak RSS {high[0] / low[0]:.2f}x, rise above imports"
        f" {high[1] / max(low[1], 1e-9):.2f}x (the images: {sizes[-1] / sizes[0]:.0f}x)"
    )


if __name__ == "__main__":
    main()
