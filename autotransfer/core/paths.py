"""Where autotransfer keeps caches and packaged assets."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from autotransfer.core.errors import UserError

__all__ = ["cache_dir", "assets_dir", "safe_name"]

#: Longest study name used as a file name (file systems allow 255 bytes; keep room for suffixes).
MAX_NAME = 200


def cache_dir() -> Path:
    """The on-disk cache root: ``$AUTOTRANSFER_CACHE`` or ``~/.cache/autotransfer``."""
    root = os.environ.get("AUTOTRANSFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "autotransfer"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def assets_dir() -> Path:
    """Files shipped inside the package (reference profiles, the laboratory checkpoint)."""
    return Path(__file__).resolve().parent.parent / "assets"  # autotransfer/assets


def safe_name(name: str, what: str = "study name") -> str:
    """``name`` unchanged when it can be used as one file or folder name, else a ``UserError``.

    Refused: an empty name, ``.`` or ``..``, a path separator (``/``, ``\\``), control
    characters, and names over ``MAX_NAME`` characters. Study names become
    ``studies/runs/NAME/`` and ``studies/exports/NAME.yaml``, so a name must never lead out of
    those folders. A leading dot is allowed: it stays inside them, and the default name of a
    relative-path target starts with one (``./data`` gives ``._data-MODEL-all-s0``).
    """
    hint = "use letters, digits, '-', '_', '.' and '=' (e.g. animals-lite0-n600-s0)"
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{what} must be a non-empty string, but got {name!r}; {hint}")
    bad = None
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        bad = "contains a path separator"
    elif name in (".", ".."):
        bad = "is a relative path"
    elif any(unicodedata.category(ch).startswith("C") for ch in name):
        bad = "contains a control character"
    elif len(name) > MAX_NAME:
        bad = f"is longer than {MAX_NAME} characters"
    if bad:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise UserError(f"{what} {shown!r} {bad}, so it cannot name a file; {hint}")
    return name
