"""The errors rule (issue 31 A): every error autotransfer raises derives from ``AutotransferError``,
and keeps the builtin base its callers catch (scikit-learn's ``NotFittedError(ValueError,
AttributeError)`` pattern). Read from the source with ``ast``: a ``raise`` of a builtin exception
class fails, except the few signals listed in ``ALLOWED``; every exception class the package
defines derives from the root."""

from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import numpy as np
import pytest

import autotransfer
from autotransfer.core import errors
from autotransfer.core.errors import AutotransferError, UserError

PACKAGE = Path(__file__).resolve().parent.parent / "autotransfer"

BUILTIN_EXCEPTIONS = {
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
}

#: (file, exception): raises that are not errors of the package, each with why.
ALLOWED = {
    # PEP 562 module ``__getattr__``: the attribute protocol itself (``hasattr``, ``from x import y``),
    # worded like Python's own "module has no attribute".
    ("__init__.py", "AttributeError"),
    ("data/__init__.py", "AttributeError"),
    # The SIGTERM handler turns the signal into Ctrl-C, so that a stop runs the same path as Ctrl-C.
    ("search/workers.py", "KeyboardInterrupt"),
    # Raised inside a ``try`` and caught by its ``except OSError`` three lines below, which raises a
    # ``UserError``: it never leaves the function.
    ("search/storage.py", "PermissionError"),
    # Control flow of the libraries autotransfer drives, not errors: typer's exit, optuna's prune.
    ("cli.py", "typer.Exit"),
    ("search/objective.py", "optuna.TrialPruned"),
    # The exported training script's template: a standalone program for users without autotransfer,
    # whose errors end it with one line (``SystemExit``), as a script's should.
    ("handback/script_template.py", "SystemExit"),
}


def _raised_names() -> list[tuple[str, int, str]]:
    """``(file, line, name)`` of each ``raise X(...)`` / ``raise X`` naming a class (not a variable)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue  # a bare ``raise`` re-raises what was caught
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = ast.unparse(target)
            if isinstance(target, ast.Name) and name[:1].islower():
                continue  # ``raise err``: re-raises a caught exception
            out.append((rel, node.lineno, name))
    return out


def test_the_package_raises_no_builtin_exception_class():
    raised = _raised_names()
    assert len(raised) > 300  # the scan sees the package's raises
    bad = [
        f"{rel}:{line}: raise {name}"
        for rel, line, name in raised
        if (name in BUILTIN_EXCEPTIONS or "." in name) and (rel, name) not in ALLOWED
    ]
    assert not bad, "raise an autotransfer.core.errors class instead:\n" + "\n".join(bad)
    used = {(rel, name) for rel, _, name in raised}
    assert ALLOWED <= used, f"stale ALLOWED entries: {sorted(ALLOWED - used)}"


def _package_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def test_every_exception_class_the_package_raises_or_defines_derives_from_the_root():
    raised = {(rel, name) for rel, _, name in _raised_names() if name not in BUILTIN_EXCEPTIONS and "." not in name}
    checked = 0
    for module_name in _package_modules():
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module_name:
                assert issubclass(value, AutotransferError), f"{module_name}.{value.__name__}"
                checked += 1
        rel = module_name.removeprefix("autotransfer").lstrip(".").replace(".", "/")
        for path_rel, name in raised:
            if path_rel in (f"{rel}.py", f"{rel}/__init__.py" if rel else "__init__.py"):
                cls = getattr(module, name, None)
                assert isinstance(cls, type) and issubclass(cls, AutotransferError), f"{path_rel}: raise {name}"
    assert checked >= 10


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("InvalidValueError", ValueError),
        ("InvalidTypeError", TypeError),
        ("AutotransferRuntimeError", RuntimeError),
        ("AutotransferTimeoutError", TimeoutError),
    ],
)
def test_each_error_class_keeps_its_builtin_base(name, base):
    cls = getattr(errors, name)
    assert name in errors.__all__
    assert issubclass(cls, AutotransferError) and issubclass(cls, base)
    assert not issubclass(cls, UserError)  # the CLI's one-line exit 2 is for the user's input only
    assert str(cls("kept as given:  two spaces")) == "kept as given:  two spaces"


def test_a_bad_protocol_raises_an_autotransfer_error_that_is_also_a_value_error():
    with pytest.raises(AutotransferError) as caught:
        autotransfer.Protocol(schedule="x")
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "schedule must be one of ['one-stage', 'lp-ft', 'gradual'], but got 'x'"
    with pytest.raises(ValueError):  # existing ``except ValueError`` callers still catch it
        autotransfer.Protocol(freeze_frac=2.0)


def test_library_errors_below_the_protocol_derive_from_the_root():
    from autotransfer.core.settings import default_steps
    from autotransfer.estimate.divergence import mmd2_unbiased
    from autotransfer.search.sampler import PriorSampler

    with pytest.raises(AutotransferError) as caught:
        default_steps(0, 32)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(AutotransferError) as caught:
        mmd2_unbiased(np.zeros((4, 2)), np.zeros((4, 3)))
    assert isinstance(caught.value, ValueError)
    with pytest.raises(AutotransferError) as caught:
        PriorSampler(0, startup=-1)
    assert isinstance(caught.value, ValueError)
