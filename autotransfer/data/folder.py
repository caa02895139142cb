"""Folder and CSV-manifest sources, with a content-keyed decode cache on disk."""
from __future__ import annotations

import csv
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autotransfer.data.cache import atomic_save, worker_count
from autotransfer.data.decode import decode_bytes
from autotransfer.errors import UserError
from autotransfer.paths import cache_dir

__all__ = ["RawImages", "load_folder", "load_manifest", "decode_files"]

# Files that are never images and not worth reporting as skipped.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "icon\r"}
# Decoded images beyond this many bytes are not written to the decode cache.
_DECODE_CACHE_MAX_BYTES = 4 << 30


@dataclass
class RawImages:
    """What a file source found: decoded images, labels, class names and skip counts."""

    images: list[np.ndarray]
    labels: np.ndarray | None
    classes: list[str]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in _IGNORED_NAMES and (
        path.name != "__MACOSX"
    )


def _files_under(folder: Path) -> list[Path]:
    """Every visible file below ``folder`` (recursively), in sorted order."""
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if not _visible(entry):
            continue
        if entry.is_dir():
            found.extend(_files_under(entry))
        elif entry.is_file():
            found.append(entry)
    return found


class _DecodeCache:
    """Decoded RGB arrays of one folder (or manifest), keyed by a hash of each file's bytes.

    One ``.npz`` per source under ``cache_dir()/decoded/``: ``keys`` (M,), ``shapes`` (M, 3),
    ``offsets`` (M + 1,), ``data`` (flat uint8) and ``bad`` (hashes of undecodable files).
    """

    def __init__(self, source: Path) -> None:
        tag = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:32]
        self.path = cache_dir() / "decoded" / f"{tag}.npz"
        self.entries: dict[str, np.ndarray] = {}
        self.bad: set[str] = set()
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as stored:
                    keys, shapes = stored["keys"], stored["shapes"]
                    offsets, data = stored["offsets"], stored["data"]
                    self.bad = set(stored["bad"].tolist())
                for i, key in enumerate(keys.tolist()):
                    chunk = data[offsets[i] : offsets[i + 1]]
                    self.entries[key] = chunk.reshape(tuple(int(s) for s in shapes[i]))
            except (OSError, ValueError, KeyError, EOFError):
                self.entries, self.bad = {}, set()

    def save(self, entries: dict[str, np.ndarray], bad: set[str]) -> None:
        keys = sorted(entries)
        total = sum(entries[k].nbytes for k in keys)
        if total > _DECODE_CACHE_MAX_BYTES:
            return
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([entries[k].nbytes for k in keys])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        for i, key in enumerate(keys):
            data[offsets[i] : offsets[i + 1]] = entries[key].reshape(-1)
        arrays = {
            "keys": np.array(keys, dtype="U64"),
            "shapes": np.array([entries[k].shape for k in keys], dtype=np.int64).reshape(-1, 3),
            "offsets": offsets,
            "data": data,
            "bad": np.array(sorted(bad), dtype="U64"),
        }
        atomic_save(self.path, lambda handle: np.savez(handle, **arrays))


def _decode_or_none(data: bytes) -> np.ndarray | None:
    try:
        return decode_bytes(data)
    except Exception:  # any undecodable file is skipped and counted
        return None


def decode_files(
    files: list[Path], source: Path, *, cache: bool = True
) -> list[np.ndarray | None]:
    """Decode ``files`` to ``(H, W, 3)`` uint8 arrays (``None`` for unreadable ones).

    With ``cache``, decoded arrays are kept per ``source`` keyed by a hash of each file's
    bytes (not its mtime), so loading the same folder again skips Pillow decoding.
    """
    contents: list[bytes | None] = []
    for path in files:
        try:
            contents.append(path.read_bytes())
        except OSError:
            contents.append(None)
    keys = [
        None if data is None else hashlib.blake2b(data, digest_size=20).hexdigest()
        for data in contents
    ]
    store = _DecodeCache(source) if cache else None
    known = store.entries if store is not None else {}
    known_bad = store.bad if store is not None else set()

    todo = sorted(
        {k for k in keys if k is not None and k not in known and k not in known_bad}
    )
    first_bytes = {}
    for key, data in zip(keys, contents):
        if key in todo and key not in first_bytes:
            first_bytes[key] = data
    workers = worker_count()
    if todo:
        blobs = [first_bytes[k] for k in todo]
        if workers > 1 and len(blobs) > 1:
            with ThreadPoolExecutor(workers) as pool:
                decoded = list(pool.map(_decode_or_none, blobs))
        else:
            decoded = [_decode_or_none(blob) for blob in blobs]
        fresh = dict(zip(todo, decoded))
    else:
        fresh = {}

    results: list[np.ndarray | None] = []
    for key in keys:
        if key is None:
            results.append(None)
        elif key in known:
            results.append(known[key])
        else:
            results.append(fresh.get(key))
    if store is not None and fresh:
        present = set(k for k in keys if k is not None)
        entries = {k: v for k, v in known.items() if k in present}
        entries.update({k: v for k, v in fresh.items() if v is not None})
        bad = {k for k in known_bad if k in present} | {k for k, v in fresh.items() if v is None}
        store.save(entries, bad)
    return results


def _skip_note(where: Path, bad_files: list[Path]) -> str:
    names = ", ".join(p.name for p in bad_files[:3]) + (", ..." if len(bad_files) > 3 else "")
    return (
        f"skipped {len(bad_files)} unreadable or non-image file(s) under {where}: {names}"
    )


def load_folder(root: Path, *, require_labels: bool = True, cache: bool = True) -> RawImages:
    """An ImageFolder tree (``root/CLASS/...image``), or with ``require_labels=False`` a
    folder of images without class sub-folders."""
    entries = [e for e in sorted(root.iterdir()) if _visible(e)]
    if not entries:
        raise UserError(
            f"dataset folder {root} is empty; put one sub-folder of images per class in it"
        )
    class_dirs = [e for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file()]
    notes: list[str] = []
    if not class_dirs:
        if require_labels:
            raise UserError(
                f"dataset folder {root} has files but no class sub-folders; put each class's "
                f"images in its own sub-folder ({root}/CLASS_NAME/image.png)"
            )
        decoded = decode_files(loose, root, cache=cache)
        bad = [p for p, a in zip(loose, decoded) if a is None]
        images = [a for a in decoded if a is not None]
        if not images:
            raise UserError(f"dataset folder {root} holds no readable images; add image files")
        if bad:
            notes.append(_skip_note(root, bad))
        return RawImages(images, None, [], len(bad), notes)

    if loose:
        notes.append(
            f"ignored {len(loose)} file(s) directly inside {root} (only class sub-folders count)"
        )
    per_class = [(d, _files_under(d)) for d in class_dirs]
    for folder, files in per_class:
        if not files:
            raise UserError(
                f"class folder {folder} has no images; add images to it or remove it"
            )
    all_files = [f for _, files in per_class for f in files]
    decoded = decode_files(all_files, root, cache=cache)
    images: list[np.ndarray] = []
    labels: list[int] = []
    bad: list[Path] = []
    position = 0
    for label, (folder, files) in enumerate(per_class):
        found = 0
        for path in files:
            array = decoded[position]
            position += 1
            if array is None:
                bad.append(path)
                continue
            images.append(array)
            labels.append(label)
            found += 1
        if found == 0:
            raise UserError(
                f"class folder {folder} has no readable images; add images to it or remove it"
            )
    if bad:
        notes.append(_skip_note(root, bad))
    classes = [d.name for d in class_dirs]
    return RawImages(images, np.asarray(labels, dtype=np.int64), classes, len(bad), notes)


def _class_sort_key(name: str) -> tuple[int, float, str]:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def load_manifest(csv_path: Path, *, require_labels: bool = True, cache: bool = True) -> RawImages:
    """A CSV manifest with a ``path,label`` header; paths are relative to the CSV's folder.

    Classes are the distinct labels, sorted (numerically when all are numbers). Rows whose
    file is missing or unreadable are skipped and counted.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = [] if not rows else list(rows[0].keys())
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read CSV manifest {csv_path}: {err}") from None
    lower = {name.strip().lower(): name for name in header if name is not None}
    if not rows:
        raise UserError(f"CSV manifest {csv_path} has no rows; add a path,label header and rows")
    if "path" not in lower:
        raise UserError(
            f"CSV manifest {csv_path} has no 'path' column (header: {','.join(header)}); "
            "its first line must be path,label"
        )
    has_labels = "label" in lower
    if require_labels and not has_labels:
        raise UserError(
            f"CSV manifest {csv_path} has no 'label' column; its first line must be path,label"
        )
    base = csv_path.parent
    paths: list[Path] = []
    names: list[str] = []
    for line, row in enumerate(rows, start=2):
        rel = (row.get(lower["path"]) or "").strip()
        if not rel:
            raise UserError(f"CSV manifest {csv_path} line {line} has an empty path")
        paths.append((base / rel) if not Path(rel).is_absolute() else Path(rel))
        if has_labels:
            label = (row.get(lower["label"]) or "").strip()
            if not label:
                raise UserError(
                    f"CSV manifest {csv_path} line {line} has an empty label; fill it in"
                )
            names.append(label)
    decoded = decode_files(paths, csv_path, cache=cache)
    keep = [i for i, a in enumerate(decoded) if a is not None]
    bad = [paths[i] for i, a in enumerate(decoded) if a is None]
    if not keep:
        raise UserError(f"CSV manifest {csv_path} lists no readable images; check its paths")
    notes = [_skip_note(csv_path.parent, bad)] if bad else []
    images = [decoded[i] for i in keep]
    if not has_labels:
        return RawImages(images, None, [], len(bad), notes)
    classes = sorted(set(names), key=_class_sort_key)
    index = {name: i for i, name in enumerate(classes)}
    labels = np.asarray([index[names[i]] for i in keep], dtype=np.int64)
    missing = [c for c in classes if not np.any(labels == index[c])]
    if missing:
        raise UserError(
            f"CSV manifest {csv_path}: class {missing[0]!r} has no readable images; "
            "fix its paths or remove its rows"
        )
    return RawImages(images, labels, classes, len(bad), notes)
