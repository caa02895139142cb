"""Folder and CSV-manifest sources, with a content-keyed decode cache on disk."""
from __future__ import annotations

import csv
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autotransfer.data.cache import atomic_save, worker_count
from autotransfer.data.decode import decode_bytes
from autotransfer.errors import UserError
from autotransfer.paths import cache_dir

__all__ = ["RawImages", "load_folder", "load_manifest", "decode_files", "class_sort_key", "SKIP_REASONS"]

# Files that are never images and not worth reporting as skipped.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "icon\r"}
# Decoded images beyond this many bytes are not written to the decode cache.
_DECODE_CACHE_MAX_BYTES = 4 << 30


#: Why a file was left out, as recorded in ``RawImages.skipped_files`` (reason -> plural phrase).
SKIP_REASONS = {
    "unreadable": "unreadable or not images",
    "missing": "missing (listed but not found)",
    "link-outside": "links leading out of the dataset folder",
    "link-loop": "links looping back to a folder that holds them",
    "link-duplicate": "links to files or folders already counted",
    "link-broken": "broken links",
}


@dataclass
class RawImages:
    """What a file source found: decoded images, labels, class names and what was skipped.

    ``skipped_files`` lists ``(path, reason)`` pairs (paths relative to the dataset folder,
    reasons keys of ``SKIP_REASONS``); ``skipped`` is its length.
    """

    images: list[np.ndarray]
    labels: np.ndarray | None
    classes: list[str]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in _IGNORED_NAMES and (
        path.name != "__MACOSX"
    )


def _inside(path: Path, folder: Path) -> bool:
    """Whether the resolved ``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


class _Walker:
    """Lists a folder's files the way ``load_folder`` counts them, symbolic links included.

    A link is followed only when its target stays inside the dataset folder (any target with
    ``allow_outside``), is not a folder that holds the link (a loop), and is not a file or
    folder counted already; every link left out is recorded in ``skipped`` with its reason.
    Each file (by resolved path) is counted once; a real file wins over a link to it.
    """

    def __init__(self, root: Path, *, allow_outside: bool = False) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.allow_outside = allow_outside
        self.skipped: list[tuple[str, str]] = []
        self.real_files: set[Path] = set()
        self.real_dirs: set[Path] = set()
        self._index_real(self.real_root)
        self.taken: set[Path] = set()
        self.entered: set[Path] = set()

    def _index_real(self, folder: Path) -> None:
        """Files and folders reachable from the root without following any link."""
        self.real_dirs.add(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.is_symlink() or not _visible(Path(entry.name)):
                continue
            if entry.is_dir(follow_symlinks=False):
                self._index_real(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                self.real_files.add(Path(entry.path))

    def _skip(self, path: Path, reason: str) -> None:
        try:
            name = str(path.relative_to(self.root))
        except ValueError:
            name = str(path)
        self.skipped.append((name, reason))

    def target(self, entry: Path, chain: tuple[Path, ...]) -> Path | None:
        """The resolved target of ``entry`` when it may be followed, else ``None`` (recorded);
        ``chain`` holds the resolved folders above ``entry`` (the root first)."""
        if not entry.is_symlink():
            return chain[-1] / entry.name
        try:
            target = entry.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop of links
            self._skip(entry, "link-broken")
            return None
        if not self.allow_outside and not _inside(target, self.real_root):
            self._skip(entry, "link-outside")
            return None
        if target.is_dir():
            if target in chain or any(_inside(c, target) for c in chain):
                self._skip(entry, "link-loop")
                return None
            if target in self.real_dirs or target in self.entered:
                self._skip(entry, "link-duplicate")
                return None
        elif target in self.real_files or target in self.taken:
            self._skip(entry, "link-duplicate")
            return None
        return target

    def files_under(self, folder: Path, resolved: Path, chain: tuple[Path, ...]) -> list[Path]:
        """Every visible file below ``folder`` (recursively, sorted); ``resolved`` is its real
        path and ``chain`` holds the resolved folders above it (the root first). A file reached
        twice counts under the first path that reached it."""
        self.entered.add(resolved)
        chain = chain + (resolved,)
        found: list[Path] = []
        for entry in sorted(folder.iterdir()):
            if not _visible(entry):
                continue
            linked = entry.is_symlink()
            target = self.target(entry, chain)
            if target is None:
                continue
            if target.is_dir():
                found.extend(self.files_under(entry, target, chain))
            elif target.is_file():
                if target in self.taken:  # reached twice without a link (only outside the root)
                    self._skip(entry, "link-duplicate")
                    continue
                if linked or not _inside(target, self.real_root):
                    self.taken.add(target)
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


def _relative(path: Path, where: Path) -> str:
    try:
        return str(path.relative_to(where))
    except ValueError:
        return str(path)


def _skip_note(where: str, skipped: list[tuple[str, str]], shown: int = 3) -> str:
    """One line: how many files were left out (``where``: "under ROOT", "listed in CSV"),
    why, and the first few names of each kind."""
    parts = []
    for reason, phrase in SKIP_REASONS.items():
        names = [name for name, why in skipped if why == reason]
        if names:
            listed = ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
            parts.append(f"{len(names)} {phrase} ({listed})")
    return f"skipped {len(skipped)} file(s) {where}: " + "; ".join(parts)


def load_folder(
    root: Path, *, require_labels: bool = True, cache: bool = True, allow_outside: bool = False
) -> RawImages:
    """An ImageFolder tree (``root/CLASS/...image``), or with ``require_labels=False`` a
    folder of images without class sub-folders. Classes are the sub-folders in natural order
    (``class_sort_key``: ``2`` before ``10``, as timm's reader).

    Symbolic links are followed only inside ``root`` (anywhere with ``allow_outside``),
    never into a loop, and each file is counted once; links left out, and unreadable files,
    are listed in ``skipped_files`` and summed up in a note.
    """
    walker = _Walker(root, allow_outside=allow_outside)
    chain = (walker.real_root,)
    entries = []
    for entry in sorted(root.iterdir()):
        if _visible(entry):
            target = walker.target(entry, chain)
            if target is not None:
                entries.append((entry, target))
                if target.is_dir():  # class folders come before links into them from elsewhere
                    walker.entered.add(target)
                    if entry.is_symlink():
                        walker._index_real(target)
    if not entries and not walker.skipped:
        raise UserError(
            f"dataset folder {root} is empty; put one sub-folder of images per class in it"
        )
    class_dirs = sorted(
        ((e, target) for e, target in entries if target.is_dir()), key=lambda item: class_sort_key(item[0].name)
    )
    loose = [e for e, target in entries if target.is_file()]
    notes: list[str] = []
    if not class_dirs:
        if require_labels:
            raise UserError(
                f"dataset folder {root} has files but no class sub-folders; put each class's "
                f"images in its own sub-folder ({root}/CLASS_NAME/image.png)"
                + (f" ({_skip_note(f'under {root}', walker.skipped)})" if walker.skipped else "")
            )
        decoded = decode_files(loose, root, cache=cache)
        skipped = walker.skipped + [
            (_relative(p, root), "unreadable") for p, a in zip(loose, decoded) if a is None
        ]
        images = [a for a in decoded if a is not None]
        if not images:
            raise UserError(f"dataset folder {root} holds no readable images; add image files")
        if skipped:
            notes.append(_skip_note(f"under {root}", skipped))
        return RawImages(images, None, [], len(skipped), notes, skipped)

    if loose:
        notes.append(
            f"ignored {len(loose)} file(s) directly inside {root} (only class sub-folders count)"
        )
    per_class = [(d, walker.files_under(d, target, chain)) for d, target in class_dirs]
    for folder, files in per_class:
        if not files:
            raise UserError(
                f"class folder {folder} has no images; add images to it or remove it"
            )
    all_files = [f for _, files in per_class for f in files]
    decoded = decode_files(all_files, root, cache=cache)
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = list(walker.skipped)
    position = 0
    for label, (folder, files) in enumerate(per_class):
        found = 0
        for path in files:
            array = decoded[position]
            position += 1
            if array is None:
                skipped.append((_relative(path, root), "unreadable"))
                continue
            images.append(array)
            labels.append(label)
            found += 1
        if found == 0:
            raise UserError(
                f"class folder {folder} has no readable images; add images to it or remove it"
            )
    if skipped:
        notes.append(_skip_note(f"under {root}", skipped))
    classes = [d.name for d, _ in class_dirs]
    return RawImages(
        images, np.asarray(labels, dtype=np.int64), classes, len(skipped), notes, skipped
    )


def class_sort_key(name: str) -> tuple[list[int | str], str]:
    """The class order, one rule for folders and manifests: natural sort, as timm's ImageFolder
    reader (``timm.utils.misc.natural_key``): case-insensitive, runs of digits compared as numbers,
    so ``2`` comes before ``10`` and ``class2`` before ``class10``. Names equal but for case are
    ordered by their exact text. Class ``i`` of a dataset is the ``i``-th name in this order;
    model folders store it as ``label_names`` so that it is never guessed."""
    parts = re.split(r"([0-9]+)", name.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def _manifest_path(
    base: Path, rel: str, csv_path: Path, line: int, allow_outside: bool
) -> Path:
    """The file a manifest row names: relative to the manifest's folder, and (unless
    ``allow_outside``) inside it once ``..`` and symbolic links are resolved."""
    path = Path(rel)
    if allow_outside:
        return path if path.is_absolute() else base / path
    hint = (
        "manifest paths must be relative to the manifest's folder and stay inside it; "
        "add ?allow_outside=1 to the dataset spec to read files elsewhere"
    )
    if path.is_absolute():
        raise UserError(f"CSV manifest {csv_path} line {line} names the absolute path {rel!r}; {hint}")
    full = base / path
    if not _inside(full.resolve(), base.resolve()):
        raise UserError(
            f"CSV manifest {csv_path} line {line} names {rel!r}, which lies outside "
            f"{base}; {hint}"
        )
    return full


def load_manifest(
    csv_path: Path, *, require_labels: bool = True, cache: bool = True, allow_outside: bool = False
) -> RawImages:
    """A CSV manifest with a ``path,label`` header; paths are relative to the CSV's folder.

    Paths must stay inside the manifest's folder (no absolute paths, no ``..`` or link that
    leads out of it) unless ``allow_outside``; a row that breaks the rule is a ``UserError``.
    Classes are the distinct labels in natural order (``class_sort_key``: ``2`` before ``10``). Rows whose
    file is missing or unreadable are skipped, listed in ``skipped_files`` and noted.
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
    rels: list[str] = []
    names: list[str] = []
    for line, row in enumerate(rows, start=2):
        rel = (row.get(lower["path"]) or "").strip()
        if not rel:
            raise UserError(f"CSV manifest {csv_path} line {line} has an empty path")
        paths.append(_manifest_path(base, rel, csv_path, line, allow_outside))
        rels.append(rel)
        if has_labels:
            label = (row.get(lower["label"]) or "").strip()
            if not label:
                raise UserError(
                    f"CSV manifest {csv_path} line {line} has an empty label; fill it in"
                )
            names.append(label)
    decoded = decode_files(paths, csv_path, cache=cache)
    keep = [i for i, a in enumerate(decoded) if a is not None]
    skipped = [
        (rels[i], "unreadable" if paths[i].is_file() else "missing")
        for i, a in enumerate(decoded)
        if a is None
    ]
    if not keep:
        raise UserError(
            f"CSV manifest {csv_path} lists no readable images; check its paths"
            + (f" ({_skip_note(f'listed in {csv_path}', skipped)})" if skipped else "")
        )
    notes = [_skip_note(f"listed in {csv_path}", skipped)] if skipped else []
    images = [decoded[i] for i in keep]
    if not has_labels:
        return RawImages(images, None, [], len(skipped), notes, skipped)
    classes = sorted(set(names), key=class_sort_key)
    index = {name: i for i, name in enumerate(classes)}
    labels = np.asarray([index[names[i]] for i in keep], dtype=np.int64)
    missing = [c for c in classes if not np.any(labels == index[c])]
    if missing:
        raise UserError(
            f"CSV manifest {csv_path}: class {missing[0]!r} has no readable images; "
            "fix its paths or remove its rows"
        )
    return RawImages(images, labels, classes, len(skipped), notes, skipped)
