"""The public API (issue 17 §5): a handful of documented names in ``autotransfer.__all__``, every
one importable; importing the package does not load torch (the CLI's --help stays fast)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import autotransfer


def test_every_public_name_resolves_and_is_documented():
    assert set(autotransfer.__all__) == {
        "tune",
        "estimate_task",
        "load_model",
        "evaluate_model",
        "StudySettings",
        "Protocol",
        "AutotransferError",
        "UserError",
        "__version__",
    }
    for name in autotransfer.__all__:
        value = getattr(autotransfer, name)
        if name != "__version__":
            assert (value.__doc__ or "").strip(), f"{name} has no docstring"
    assert issubclass(autotransfer.UserError, autotransfer.AutotransferError)
    assert autotransfer.tune.__module__ == "autotransfer.pipeline.tune_job"  # the job as the CLI runs it
    importlib.import_module("autotransfer.estimate")  # a package: it must not shadow a public function
    assert callable(autotransfer.estimate_task) and callable(autotransfer.tune)


def test_importing_the_package_does_not_load_torch():
    code = "import sys, autotransfer; autotransfer.StudySettings(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
