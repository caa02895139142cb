"""``load_dataset(spec)``: parse a dataset spec string and load it as an ImageDataset."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from autotransfer.core.errors import UserError
from autotransfer.data.builtin import builtin_names, load_builtin_arrays, resolve_builtin
from autotransfer.data.folder import DECODE_SIDE, RawImages, load_folder, load_manifest
from autotransfer.data.sampling import stratified_subsample
from autotransfer.data.types import ImageDataset

__all__ = ["load_dataset", "parse_class_selector", "split_spec", "skipped_summary"]

_QUERY = re.compile(r"^[a-z_]+=[^&=]*(&[a-z_]+=[^&=]*)*$")
_KNOWN_KEYS = ("classes", "split", "n", "seed", "allow_outside", "decode")
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no", "")
_SPEC_HELP = "use folder:PATH (one sub-folder per class), a CSV manifest path, or builtin:NAME"


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``'builtin:x?classes=1-3&n=50'`` -> ``('builtin:x', {'classes': '1-3', 'n': '50'})``.

    A ``?`` only starts options when what follows looks like ``key=value&...``, so paths
    that contain ``?`` still work.
    """
    base, sep, tail = spec.rpartition("?")
    if not sep or not _QUERY.match(tail):
        return spec, {}
    options: dict[str, str] = {}
    for pair in tail.split("&"):
        key, _, value = pair.partition("=")
        if key not in _KNOWN_KEYS:
            raise UserError(f"unknown option {key!r} in dataset spec {spec!r}; known: {', '.join(_KNOWN_KEYS)}")
        options[key] = value
    return base, options


def parse_class_selector(text: str, classes: list[str] | tuple[str, ...], spec: str = "") -> list[int]:
    """Class indices (sorted, unique) from ``'5-9'``, ``'0,2,4-6'`` or class names.

    Raises a UserError naming the selector when it is malformed or out of range.
    """
    where = f" for {spec}" if spec else ""
    hint = f"use class indices 0..{len(classes) - 1}, ranges like 2-5, or class names, separated by commas"
    chosen: set[int] = set()
    tokens = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in tokens):
        raise UserError(f"bad class selector {text!r}{where}; {hint}")
    names = {name: i for i, name in enumerate(classes)}
    for token in tokens:
        if token in names:
            chosen.add(names[token])
            continue
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", token)
        if not match:
            raise UserError(f"bad class selector {text!r}{where}: {token!r} is not a class; {hint}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low or high >= len(classes):
            raise UserError(f"bad class selector {text!r}{where}: {token!r} is out of range; {hint}")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def _select(labels: np.ndarray, selection: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the images in ``selection`` and their labels re-indexed 0..k-1."""
    remap = np.full(max(int(labels.max(initial=-1)), max(selection)) + 1, -1, dtype=np.int64)
    remap[selection] = np.arange(len(selection))
    keep = np.flatnonzero(np.isin(labels, selection))
    return keep, remap[labels[keep]]


def _grey_fingerprint(grey: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> str:
    """A content key for grey images shown as RGB: hashes the one stored channel (a third of
    the bytes of the generic fingerprint; equal grey data, equal key)."""
    digest = hashlib.sha256(b"grey-as-rgb\x00")
    digest.update(str(grey.shape).encode())
    digest.update(np.ascontiguousarray(grey).data.cast("B"))
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    digest.update("\x00".join(classes).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=32)
def _builtin_selection(name: str, rows: tuple[int, int] | None, selection: tuple[int, ...] | None):
    """Images (read-only RGB view or list), labels, classes and fingerprint of a builtin,
    restricted to ``rows`` (an official split) and then to the classes in ``selection``."""
    images, labels, classes = load_builtin_arrays(name)
    if rows is not None:
        images, labels = images[rows[0] : rows[1]], labels[rows[0] : rows[1]]
    if selection is not None:
        keep, labels = _select(labels, list(selection))
        if isinstance(images, list):
            images = [images[i] for i in keep]
        else:
            images = images[keep]
            images.flags.writeable = False
        classes = tuple(classes[i] for i in selection)
    labels = np.array(labels, dtype=np.int64)
    labels.flags.writeable = False
    view: np.ndarray | list[np.ndarray]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        digest = _grey_fingerprint(images, labels, classes)
        view = np.broadcast_to(images[..., None], images.shape + (3,))
    else:
        view = images
        probe = ImageDataset(spec="", images=view, labels=labels, classes=list(classes))
        digest = probe.fingerprint
    return view, labels, classes, digest


def _load_builtin(name: str, options: dict[str, str], spec: str) -> ImageDataset:
    entry = resolve_builtin(name)
    if "allow_outside" in options:
        raise UserError(f"?allow_outside= only applies to folders and CSV manifests, not to {spec}")
    rows = None
    if "split" in options:
        known = {split: (start, stop) for split, start, stop in entry.splits}
        if options["split"] not in known:
            offered = ", ".join(known) if known else "none"
            raise UserError(f"bad split {options['split']!r} for {spec}; builtin:{entry.name} offers: {offered}")
        rows = known[options["split"]]
    selection = None
    if "classes" in options:
        _, _, all_classes = load_builtin_arrays(entry.name)
        selection = tuple(parse_class_selector(options["classes"], all_classes, spec))
    view, labels, classes, digest = _builtin_selection(entry.name, rows, selection)
    notes = [entry.note] if entry.note else []
    return ImageDataset(
        spec=spec,
        images=list(view) if isinstance(view, list) else view,
        labels=labels.copy(),
        classes=list(classes),
        flip=entry.flip,
        notes=notes,
        _fingerprint=digest,
    )


def _stack_if_uniform(images: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if images and len({im.shape for im in images}) == 1:
        return np.stack(images)
    return images


def _flag(options: dict[str, str], key: str, spec: str) -> bool:
    value = options.get(key, "0").strip().lower()
    if value not in _TRUE + _FALSE:
        raise UserError(f"option {key}={options[key]!r} in dataset spec {spec!r} must be 1 or 0")
    return value in _TRUE


def _load_path(raw_path: str, options: dict[str, str], spec: str, *, require_labels: bool, cache: bool) -> ImageDataset:
    if not raw_path.strip():
        raise UserError(f"dataset spec {spec!r} has no path; {_SPEC_HELP}")
    path = Path(os.path.expanduser(raw_path))
    if not path.exists():
        raise UserError(f"dataset path {path} does not exist; {_SPEC_HELP} (built-ins: {', '.join(builtin_names())})")
    outside = _flag(options, "allow_outside", spec)
    side = _int_option(options, "decode", spec, 0) if "decode" in options else DECODE_SIDE
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise UserError(f"dataset path {path} is a file, not a folder or a .csv manifest; {_SPEC_HELP}")
        raw: RawImages = load_manifest(
            path,
            require_labels=require_labels,
            cache=cache,
            allow_outside=outside,
            max_side=side,
        )
    elif path.is_dir():
        raw = load_folder(path, require_labels=require_labels, cache=cache, allow_outside=outside, max_side=side)
    else:
        raise UserError(f"dataset path {path} is neither a folder nor a file; {_SPEC_HELP}")
    if "split" in options:
        raise UserError(f"?split= only applies to built-in datasets, not to {path}")
    images: list[np.ndarray] = raw.images
    labels, classes = raw.labels, raw.classes
    if "classes" in options:
        if labels is None:
            raise UserError(f"dataset {path} has no labels, so ?classes= cannot select from it")
        selection = parse_class_selector(options["classes"], classes, spec)
        keep, labels = _select(labels, selection)
        images = [images[i] for i in keep]
        classes = [classes[i] for i in selection]
    return ImageDataset(
        spec=spec,
        images=_stack_if_uniform(images),
        labels=labels,
        classes=list(classes),
        flip=True,
        notes=list(raw.notes),
        skipped=raw.skipped,
        skipped_files=list(raw.skipped_files),
    )


def _int_option(options: dict[str, str], key: str, spec: str, minimum: int) -> int:
    try:
        value = int(options[key])
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UserError(f"option {key}={options[key]!r} in dataset spec {spec!r} must be an integer >= {minimum}")
    return value


def load_dataset(spec: str, *, require_labels: bool = True, cache: bool = True) -> ImageDataset:
    """Load a dataset from a spec string.

    Specs: ``builtin:NAME`` (see :func:`list_builtins`), ``folder:PATH`` or a plain path
    (an ImageFolder tree with one sub-folder per class, a folder of images when
    ``require_labels=False``, or a CSV manifest with a ``path,label`` header). Options
    after ``?``: ``split=train`` picks a built-in's official split (fashion-mnist: train,
    test); ``classes=5-9`` / ``classes=0,2,4-6`` / ``classes=cat,dog`` keeps those classes,
    re-indexed 0..k-1; ``n=500&seed=0`` takes a stratified subsample; ``allow_outside=1``
    lets a folder's symbolic links, or a CSV manifest's paths, lead out of the folder (of the
    manifest's folder); without it such links are skipped and such rows refused;
    ``decode=N`` decodes folder and CSV images with the shorter side at most N pixels
    (default ``DECODE_SIDE`` = 512; ``decode=0``: full size).

    Images come back as RGB uint8; corrupt or non-image files, missing manifest rows and
    links left out are skipped, counted in ``skipped`` and listed in ``skipped_files``
    (``skipped_summary`` gives a JSON-able digest). With ``cache``, decoded folder images are kept on disk keyed by content.
    Raises :class:`UserError` naming the bad path or value.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"dataset spec must be a non-empty string but got {spec!r}; {_SPEC_HELP}")
    spec = spec.strip()
    base, options = split_spec(spec)
    if base.startswith("builtin:"):
        ds = _load_builtin(base[len("builtin:") :], options, spec)
    else:
        raw_path = base[len("folder:") :] if base.startswith("folder:") else base
        ds = _load_path(raw_path, options, spec, require_labels=require_labels, cache=cache)
    if require_labels and ds.labels is not None and len(ds.classes) < 2:
        raise UserError(
            f"dataset {spec} has only one class ({ds.classes[0]!r}); a labelled dataset needs at least 2 classes"
        )
    if "n" in options:
        seed = _int_option(options, "seed", spec, 0) if "seed" in options else 0
        ds = stratified_subsample(ds, _int_option(options, "n", spec, 1), seed=seed)
        ds.spec = spec
    return ds


def skipped_summary(ds: ImageDataset, first: int = 5) -> dict[str, object]:
    """A JSON-able digest of what loading ``ds`` left out.

    Returns ``{"count": int, "first": [path, ...], "reasons": {reason: count}}``: the number of
    skipped files, the first ``first`` of their paths (relative to the dataset folder or
    manifest), and a count per reason (``autotransfer.data.folder.SKIP_REASONS``); a count of 0
    with empty parts when nothing was skipped.
    """
    reasons: dict[str, int] = {}
    for _, reason in ds.skipped_files:
        reasons[reason] = reasons.get(reason, 0) + 1
    count = max(int(ds.skipped), len(ds.skipped_files))
    return {
        "count": count,
        "first": [path for path, _ in ds.skipped_files[:first]],
        "reasons": reasons,
    }
