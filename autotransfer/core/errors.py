"""The package's errors: one root, ``AutotransferError``, that every error autotransfer raises derives from.

``UserError`` is a mistake in the user's input: one line that names the bad value and says what to
do; the CLI prints it and exits 2. Every other error also keeps the builtin base its callers catch
(scikit-learn's ``NotFittedError(ValueError, AttributeError)`` pattern, as optuna's errors do):
``InvalidValueError`` (a ``ValueError``: a bad argument to a library function),
``InvalidTypeError`` (``TypeError``), ``AutotransferRuntimeError`` (``RuntimeError``: an internal
check failed) and ``AutotransferTimeoutError`` (``TimeoutError``). The ones raised where they
happen derive from the root too (``train.DivergedError``, ``train.OutOfMemory``,
``search.objective.TrialFailed``, ``backbones.groups.GroupingError``).
``tests/test_errors_rule.py`` checks that the package raises no builtin exception class.
"""

from __future__ import annotations

__all__ = [
    "AutotransferError",
    "UserError",
    "InvalidValueError",
    "InvalidTypeError",
    "AutotransferRuntimeError",
    "AutotransferTimeoutError",
]


class AutotransferError(Exception):
    """The root of every error autotransfer raises: ``except AutotransferError`` catches them all."""


class UserError(AutotransferError):
    """A mistake in the user's input. The CLI prints ``str(err)`` on one line and exits 2.

    The message must name the offending path or value and say what to do about it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class InvalidValueError(AutotransferError, ValueError):
    """A bad value given to a library function (``except ValueError`` still catches it)."""


class InvalidTypeError(AutotransferError, TypeError):
    """A value of a type a library function does not take (``except TypeError`` still catches it)."""


class AutotransferRuntimeError(AutotransferError, RuntimeError):
    """An internal check failed at run time (``except RuntimeError`` still catches it)."""


class AutotransferTimeoutError(AutotransferError, TimeoutError):
    """Waiting ran past its limit (``except TimeoutError`` still catches it)."""
