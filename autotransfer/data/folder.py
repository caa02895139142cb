"""Folder and CSV-manifest sources, with a content-keyed decode cache on disk.

Over 400 lines: folder walking, CSV manifests, symbolic-link rules and the decode cache share one
set of skip reasons, so that every skipped file is counted the same way.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from autotransfer.core.errors import UserError
from autotransfer.core.paths import cache_dir
from autotransfer.data.cache import atomic_save, mark_used, prune_cache, worker_count
from autotransfer.data.decode import decode_bytes

__all__ = [
    "RawImages",
    "load_folder",
    "load_manifest",
    "decode_files",
    "class_sort_key",
    "SKIP_REASONS",
    "DECODE_SIDE",
    "manifest_path",
]

# Files that are never images and not worth reporting as skipped.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "icon\r"}


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
    return not path.name.startswith(".") and path.name.lower() not in _IGNORED_NAMES and (path.name != "__MACOSX")


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


#: Images from folders and manifests are decoded with their shorter side at most this many
#: pixels: twice the largest native input of the catalog's backbones (224-260 px), so every
#: study resolution up to 256 px is resized down from at least 2x. ``?decode=N`` in a
#: dataset spec changes it; ``decode=0`` keeps full size.
DECODE_SIDE = 512
# Bump when the reduced decoding changes: old cache entries then stop matching.
_DECODE_VERSION = "draft-bicubic-v1"


class _DecodeCache:
    """Decoded (reduced) RGB arrays keyed by a hash of each file's bytes and the decode side.

    One ``.npy`` per image under ``cache_dir()/decoded/<side>-<version>/`` (an empty
    ``.bad`` file marks bytes that are not an image), so a folder of any size is cached and
    only one image at a time is read back into memory. The cache is capped (``data.cache``,
    ``prune_cache``): a hit marks the entry used, and each ``decode_files`` that wrote entries
    prunes the least recently used ones above the cap.
    """

    def __init__(self, max_side: int | None) -> None:
        self.folder = cache_dir() / "decoded" / f"{max_side or 'full'}-{_DECODE_VERSION}"
        self.written = False

    def get(self, key: str) -> np.ndarray | None | Literal[False]:
        """The array, ``None`` for known-bad bytes, ``False`` when not cached."""
        if (self.folder / f"{key}.bad").exists():
            return None
        path = self.folder / f"{key}.npy"
        if path.exists():
            try:
                array = np.load(path, allow_pickle=False)
                if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
                    mark_used(path)
                    return array
            except (OSError, ValueError, EOFError):
                pass  # damaged: decode again
        return False

    def put(self, key: str, array: np.ndarray | None) -> None:
        self.written = True
        try:
            if array is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / f"{key}.bad").touch()
            else:
                atomic_save(
                    self.folder / f"{key}.npy",
                    lambda handle: np.save(handle, array, allow_pickle=False),
                )
        except OSError:
            pass  # a read-only or full cache costs speed only


def _decode_or_none(data: bytes, max_side: int | None) -> np.ndarray | None:
    try:
        return decode_bytes(data, max_side=max_side)
    except Exception:  # any undecodable file is skipped and counted
        return None


def decode_files(
    files: list[Path],
    source: Path | None = None,
    *,
    cache: bool = True,
    max_side: int | None = DECODE_SIDE,
) -> list[np.ndarray | None]:
    """Decode ``files`` to ``(H, W, 3)`` uint8 arrays (``None`` for unreadable ones), the
    shorter side at most ``max_side`` (``None`` or 0: full size; see ``decode_bytes``).

    Files are read, hashed and decoded one at a time per thread, so host memory holds the
    reduced arrays plus one encoded file and one decode per thread, never the whole folder's
    bytes or full-size pixels. With ``cache``, each reduced array is kept on disk keyed by a
    hash of the file's bytes (not its mtime) and ``max_side``. ``source`` is unused (the
    cache is keyed by content, wherever the file lies).
    """
    max_side = int(max_side) if max_side else None
    store = _DecodeCache(max_side) if cache else None

    def one(path: Path) -> np.ndarray | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        key = hashlib.blake2b(data, digest_size=20).hexdigest()
        if store is not None:
            hit = store.get(key)
            if hit is not False:
                return hit
        array = _decode_or_none(data, max_side)
        del data
        if store is not None:
            store.put(key, array)
        return array

    workers = worker_count()
    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(workers) as pool:
            decoded = list(pool.map(one, files))
    else:
        decoded = [one(path) for path in files]
    if store is not None and store.written:
        prune_cache()  # the cache's cap (data.cache): least recently used entries go first
    return decoded


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
    root: Path,
    *,
    require_labels: bool = True,
    cache: bool = True,
    allow_outside: bool = False,
    max_side: int | None = DECODE_SIDE,
) -> RawImages:
    """An ImageFolder tree (``root/CLASS/...image``), or with ``require_labels=False`` a
    folder of images without class sub-folders. Classes are the sub-folders in natural order
    (``class_sort_key``: ``2`` before ``10``, as timm's reader).

    Symbolic links are followed only inside ``root`` (anywhere with ``allow_outside``),
    never into a loop, and each file is counted once; links left out, and unreadable files,
    are listed in ``skipped_files`` and summed up in a note. Images are decoded with their
    shorter side at most ``max_side`` (``decode_files``).
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
        raise UserError(f"dataset folder {root} is empty; put one sub-folder of images per class in it")
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
        decoded = decode_files(loose, root, cache=cache, max_side=max_side)
        skipped = walker.skipped + [(_relative(p, root), "unreadable") for p, a in zip(loose, decoded) if a is None]
        images: list[np.ndarray] = [a for a in decoded if a is not None]
        if not images:
            raise UserError(f"dataset folder {root} holds no readable images; add image files")
        if skipped:
            notes.append(_skip_note(f"under {root}", skipped))
        return RawImages(images, None, [], len(skipped), notes, skipped)

    if loose:
        notes.append(f"ignored {len(loose)} file(s) directly inside {root} (only class sub-folders count)")
    per_class = [(d, walker.files_under(d, target, chain)) for d, target in class_dirs]
    for folder, files in per_class:
        if not files:
            raise UserError(f"class folder {folder} has no images; add images to it or remove it")
    all_files = [f for _, files in per_class for f in files]
    decoded = decode_files(all_files, root, cache=cache, max_side=max_side)
    images = []
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
            raise UserError(f"class folder {folder} has no readable images; add images to it or remove it")
    if skipped:
        notes.append(_skip_note(f"under {root}", skipped))
    classes = [d.name for d, _ in class_dirs]
    return RawImages(images, np.asarray(labels, dtype=np.int64), classes, len(skipped), notes, skipped)


def class_sort_key(name: str) -> tuple[list[int | str], str]:
    """The class order, one rule for folders and manifests: natural sort, as timm's ImageFolder
    reader (``timm.utils.misc.natural_key``): case-insensitive, runs of digits compared as numbers,
    so ``2`` comes before ``10`` and ``class2`` before ``class10``. Names equal but for case are
    ordered by their exact text. Class ``i`` of a dataset is the ``i``-th name in this order;
    model folders store it as ``label_names`` so that it is never guessed."""
    parts = re.split(r"([0-9]+)", name.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def manifest_path(
    base: Path,
    rel: str,
    csv_path: Path,
    line: int,
    allow_outside: bool,
    *,
    opt_in: str = "add ?allow_outside=1 to the dataset spec",
) -> Path:
    """The file a manifest row names: relative to the manifest's folder, and (unless
    ``allow_outside``) inside it once ``..`` and symbolic links are resolved; a row that leads
    out is a ``UserError`` naming the line and ``opt_in`` (how to allow it). ``load_manifest`` and
    ``predict`` apply this one rule."""
    path = Path(rel)
    if allow_outside:
        return path if path.is_absolute() else base / path
    hint = (
        f"manifest paths must be relative to the manifest's folder and stay inside it; {opt_in} to read files elsewhere"
    )
    if path.is_absolute():
        raise UserError(f"CSV manifest {csv_path} line {line} names the absolute path {rel!r}; {hint}")
    full = base / path
    if not _inside(full.resolve(), base.resolve()):
        raise UserError(f"CSV manifest {csv_path} line {line} names {rel!r}, which lies outside {base}; {hint}")
    return full


def load_manifest(
    csv_path: Path,
    *,
    require_labels: bool = True,
    cache: bool = True,
    allow_outside: bool = False,
    max_side: int | None = DECODE_SIDE,
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
        raise UserError(f"CSV manifest {csv_path} has no 'label' column; its first line must be path,label")
    base = csv_path.parent
    paths: list[Path] = []
    rels: list[str] = []
    names: list[str] = []
    for line, row in enumerate(rows, start=2):
        rel = (row.get(lower["path"]) or "").strip()
        if not rel:
            raise UserError(f"CSV manifest {csv_path} line {line} has an empty path")
        paths.append(manifest_path(base, rel, csv_path, line, allow_outside))
        rels.append(rel)
        if has_labels:
            label = (row.get(lower["label"]) or "").strip()
            if not label:
                raise UserError(f"CSV manifest {csv_path} line {line} has an empty label; fill it in")
            names.append(label)
    decoded = decode_files(paths, csv_path, cache=cache, max_side=max_side)
    keep = [i for i, a in enumerate(decoded) if a is not None]
    skipped = [(rels[i], "unreadable" if paths[i].is_file() else "missing") for i, a in enumerate(decoded) if a is None]
    if not keep:
        raise UserError(
            f"CSV manifest {csv_path} lists no readable images; check its paths"
            + (f" ({_skip_note(f'listed in {csv_path}', skipped)})" if skipped else "")
        )
    notes = [_skip_note(f"listed in {csv_path}", skipped)] if skipped else []
    images = [a for a in decoded if a is not None]  # decoded[i] for i in keep
    if not has_labels:
        return RawImages(images, None, [], len(skipped), notes, skipped)
    classes = sorted(set(names), key=class_sort_key)
    index = {name: i for i, name in enumerate(classes)}
    labels = np.asarray([index[names[i]] for i in keep], dtype=np.int64)
    missing = [c for c in classes if not np.any(labels == index[c])]
    if missing:
        raise UserError(
            f"CSV manifest {csv_path}: class {missing[0]!r} has no readable images; fix its paths or remove its rows"
        )
    return RawImages(images, labels, classes, len(skipped), notes, skipped)
