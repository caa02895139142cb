"""The package's errors: one root, ``AutotransferError``, that every error autotransfer raises derives from.

``UserError`` is a mistake in the user's input: one line that names the bad value and says what to
do; the CLI prints it and exits 2. The others are raised where they happen and derive from the root
too (``train.DivergedError``, ``train.OutOfMemory``, ``search.objective.TrialFailed``,
``backbones.groups.GroupingError``); each also keeps the builtin base its callers catch
(``RuntimeError``, ``ValueError``), as optuna's errors do.
"""

from __future__ import annotations

__all__ = ["AutotransferError", "UserError"]


class AutotransferError(Exception):
    """The root of every error autotransfer raises: ``except AutotransferError`` catches them all."""


class UserError(AutotransferError):
    """A mistake in the user's input. The CLI prints ``str(err)`` on one line and exits 2.

    The message must name the offending path or value and say what to do about it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
