"""Build the shipped same-domain reference profiles ``autotransfer/assets/<model>-reference.json``.

For each built-in model, the source-free BN-W2 divergence per depth group of real images of its
source domain, at the model's native input size (see ``autotransfer.estimate.reference``):

- efficientnet_lite0/1/2: the 20 real ImageNet photos foolbox ships (``builtin:imagenet-photos``);
- fashion-source: 500 held-out Fashion-MNIST test images of its training classes 0-4
  (``builtin:fashion-mnist?split=test&classes=0-4``, stratified, seed 0).
- digit-source / silhouette-source: their held-out source test sets (``benchmarks/build_lab_sources.py``):
  the 500 MNIST 0-4 test digits, 500 of the 1,000 animal 0-4 test silhouettes (stratified, seed 0).

Each file also records how noisy such a profile is: the profiles of two disjoint random halves
of the images (``halves``), i.e. what a same-domain sample of half the size measures.

    python benchmarks/build_references.py [--models fashion-source,efficientnet_lite0] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autotransfer.backbones import create_backbone
from autotransfer.data import load_dataset, stratified_subsample
from autotransfer.estimate.features import native_array
from autotransfer.estimate.reference import (
    REFERENCE_SOURCES,
    measure_bn_profile,
    reference_payload,
    write_reference,
)


def build(name: str, seed: int = 0) -> dict:
    spec, n = REFERENCE_SOURCES[name]
    dataset = load_dataset(spec, require_labels=False)
    if n is not None and n < len(dataset):
        dataset = stratified_subsample(dataset, n, seed=seed)
    backbone = create_backbone(name, num_classes=2)
    start = time.perf_counter()
    images = native_array(backbone, dataset)
    values = measure_bn_profile(backbone, images)
    order = np.random.default_rng(seed).permutation(len(images))
    half = len(order) // 2
    halves = [measure_bn_profile(backbone, images[np.sort(part)]) for part in (order[:half], order[half : 2 * half])]
    seconds = time.perf_counter() - start
    subsample = f", a stratified subsample of {len(images)} (seed {seed})" if n is not None else ""
    how = (
        f"bn_divergence per depth group (per-layer W2 of the BatchNorm input mean/std vs the stored "
        f"running statistics, / source variance, averaged over each group's layers) of {spec}"
        f"{subsample}, resized to {backbone.preprocessing.input_size} px with to_array (bicubic, centre crop)"
    )
    payload = reference_payload(
        backbone,
        values,
        dataset_spec=spec,
        n_images=len(images),
        how=how,
        extra={
            "halves": {"n_images": half, "values": [[float(v) for v in h] for h in halves]},
            "seed": seed,
            "build_seconds": round(seconds, 2),
        },
    )
    path = write_reference(name, payload)
    tail = values[len(values) // 2 :].mean()
    print(
        f"{name}: {path.name}  n={len(images)}  values={np.round(values, 4).tolist()}  "
        f"tail mean={tail:.4f}  halves tail={[round(float(h[len(h) // 2 :].mean()), 4) for h in halves]}  "
        f"({seconds:.1f} s)"
    )
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(REFERENCE_SOURCES), help="comma-separated built-in models")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        build(name.strip())


if __name__ == "__main__":
    main()
