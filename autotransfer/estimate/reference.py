"""Shipped same-domain reference profiles: the BN-W2 divergence of real source-domain images.

The source-free BN-W2 divergence (``autotransfer.estimate.bnstats``) of a finite sample is not 0
even for images of the source domain: sample noise in the activation means, and any gap between
the stored running statistics and the images at hand, leave a floor that also rises with depth.
Each built-in model therefore ships the profile of a few real source-domain images
(``autotransfer/assets/<name>-reference.json``, built by ``benchmarks/build_references.py``);
the estimator reports the *excess* over it (docs/design.md, "divergence profile").
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from autotransfer.backbones.types import Backbone
from autotransfer.core.errors import InvalidValueError
from autotransfer.core.paths import assets_dir

__all__ = [
    "REFERENCE_METHOD",
    "REFERENCE_SOURCES",
    "REFERENCE_VERSION",
    "load_reference",
    "measure_bn_profile",
    "reference_path",
    "reference_payload",
    "write_reference",
]

#: The divergence the shipped references hold (``bn_divergence`` per depth group).
REFERENCE_METHOD = "bn-w2"
#: Bumped when the file layout changes.
REFERENCE_VERSION = 1
#: Where each built-in model's reference comes from: real images of its source domain.
#: ImageNet models: the 20 ImageNet validation photos foolbox ships (the only real ImageNet
#: images offline). The laboratory: held-out Fashion-MNIST *test* images of its own training
#: classes 0-4 (500 of 5,000, stratified, seed 0), never seen in its training. The digit and
#: silhouette sources: their own held-out test sets (``benchmarks/build_lab_sources.py``), all
#: 500 MNIST 0-4 digits, and 500 (stratified, seed 0) of the 1,000 animal 0-4 silhouettes.
REFERENCE_SOURCES: dict[str, tuple[str, int | None]] = {
    "efficientnet_lite0": ("builtin:imagenet-photos", None),
    "efficientnet_lite1": ("builtin:imagenet-photos", None),
    "efficientnet_lite2": ("builtin:imagenet-photos", None),
    "fashion-source": ("builtin:fashion-mnist?split=test&classes=0-4", 500),
    "digit-source": ("builtin:mnist5k?classes=0-4&n=500&seed=0", None),
    "silhouette-source": ("builtin:animals?classes=0-4&n=1000&seed=0", 500),
}


def measure_bn_profile(backbone: Backbone, dataset, *, batch_size: int = 32) -> np.ndarray:
    """``(G,)`` BN-W2 divergence per depth group of ``dataset`` (an ``ImageDataset`` or an
    ``(N, S, S, 3)`` uint8 array already at the native size), measured as the estimator does:
    at the model's native input size, eval mode, on the model's current device."""
    import torch

    from autotransfer.estimate.bnstats import bn_divergence
    from autotransfer.estimate.features import image_batches, native_array

    images = dataset if isinstance(dataset, np.ndarray) else native_array(backbone, dataset)
    device = next(backbone.model.parameters()).device
    batches = image_batches(backbone, images, batch_size=batch_size, device=device, channels_last=True)
    with torch.no_grad():
        result = bn_divergence(backbone.model, batches, layer_groups=[g.modules for g in backbone.groups])
    return np.asarray(result.per_group, dtype=np.float64)


def reference_path(name: str) -> Path:
    """``autotransfer/assets/<name>-reference.json``."""
    return assets_dir() / f"{name}-reference.json"


def reference_payload(
    backbone: Backbone,
    values: np.ndarray,
    *,
    dataset_spec: str,
    n_images: int,
    how: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of one reference profile.

    Args:
        backbone: the model it was measured on (group names, native input size).
        values: ``(G,)`` BN-W2 divergence per depth group.
        dataset_spec, n_images: the source-domain images used.
        how: one line on how it was built.
        extra: more fields (e.g. the noise of smaller subsets).
    """
    import timm
    import torch

    values = np.asarray(values, dtype=np.float64)
    if values.shape != (backbone.num_groups,):
        raise InvalidValueError(f"values must have shape ({backbone.num_groups},), but got {values.shape}")
    payload: dict[str, Any] = {
        "version": REFERENCE_VERSION,
        "model": backbone.spec,
        "method": REFERENCE_METHOD,
        "groups": [g.name for g in backbone.groups],
        "values": [float(v) for v in values],
        "dataset": dataset_spec,
        "n_images": int(n_images),
        "input_size": int(backbone.preprocessing.input_size),
        "how": how,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "script": "benchmarks/build_references.py",
    }
    payload.update(extra or {})
    return payload


def write_reference(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``reference_path(name)`` and return the path."""
    path = reference_path(name)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_reference(backbone: Backbone) -> np.ndarray | None:
    """The shipped ``(G,)`` BN-W2 reference profile of ``backbone``, or ``None`` if it has none.

    Reads ``backbone.reference_profile`` (set by ``create_backbone`` for built-in models).

    Raises:
        ValueError: the file exists but does not fit the backbone (other depth groups, another
            method or input size): the shipped asset is stale; rebuild it with
            ``python benchmarks/build_references.py``.
    """
    path = backbone.reference_profile
    if path is None:
        return None
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return None
    payload = json.loads(path.read_text())
    groups = [g.name for g in backbone.groups]
    problems = []
    if payload.get("method") != REFERENCE_METHOD:
        problems.append(f"method {payload.get('method')!r} is not {REFERENCE_METHOD!r}")
    if payload.get("groups") != groups:
        problems.append(f"groups {payload.get('groups')!r} are not the model's {groups!r}")
    if int(payload.get("input_size", -1)) != backbone.preprocessing.input_size:
        problems.append(f"input size {payload.get('input_size')!r} is not {backbone.preprocessing.input_size}")
    if problems:
        raise InvalidValueError(
            f"reference profile {str(path)!r} does not fit {backbone.spec!r}: {'; '.join(problems)}; "
            "rebuild it with python benchmarks/build_references.py"
        )
    values = np.asarray(payload["values"], dtype=np.float64)
    if values.shape != (len(groups),) or not np.all(np.isfinite(values)):
        raise InvalidValueError(f"reference profile {str(path)!r} holds bad values {payload['values']!r}")
    return values
