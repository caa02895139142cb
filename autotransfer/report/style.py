"""What every autotransfer figure shares (its title prefix)."""

from __future__ import annotations

__all__ = ["TITLE_PREFIX"]

#: Every figure's title starts with this, so a screenshot says where it came from.
TITLE_PREFIX = "autotransfer · "
