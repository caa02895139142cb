"""User-facing errors: one line that names the bad value and says what to do."""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in the user's input. The CLI prints ``str(err)`` on one line and exits 2.

    The message must name the offending path or value and say what to do about it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
