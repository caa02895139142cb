"""Where autotransfer keeps caches and packaged assets."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "assets_dir"]


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
    return Path(__file__).resolve().parent / "assets"
