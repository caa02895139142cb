"""What the command line's options resolve to (pipeline/options.py): the GPU defaults for batch
size and resolution (issue 19 §3), recorded as the study's settings, and the output folder."""

from __future__ import annotations

import pytest
import torch

from autotransfer.core.errors import UserError
from autotransfer.pipeline.options import GPU_BATCH_SIZE, GPU_RESOLUTION, tune_outputs, tune_settings
from autotransfer.search.demo import DEFAULT_SETTINGS


def test_a_target_on_a_gpu_gets_the_gpu_batch_and_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, as auto sees it
    settings = tune_settings("builtin:digits", {"device": None}, surface=None)
    assert (settings.batch_size, settings.resolution) == (GPU_BATCH_SIZE, GPU_RESOLUTION)
    # what the user sets wins, and the demo keeps its own
    settings = tune_settings("builtin:digits", {"batch_size": 16, "resolution": 32}, surface=None)
    assert (settings.batch_size, settings.resolution) == (16, 32)
    demo = tune_settings(None, {}, surface=None)
    assert (demo.batch_size, demo.resolution) == (DEFAULT_SETTINGS.batch_size, DEFAULT_SETTINGS.resolution)


def test_cpu_studies_keep_the_cpu_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    settings = tune_settings("builtin:digits", {"device": "cpu"}, surface=None)
    assert (settings.batch_size, settings.resolution) == (32, 64)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = tune_settings("builtin:digits", {}, surface=None)
    assert (settings.batch_size, settings.resolution) == (32, 64)


def test_tune_outputs_resolve_under_one_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOTRANSFER_STORAGE", raising=False)
    monkeypatch.delenv("AUTOTRANSFER_SURFACE", raising=False)
    out = tune_outputs(tmp_path / "out")
    assert out.folder == (tmp_path / "out").resolve() and out.runs_dir == out.folder / "runs"
    assert out.storage == f"sqlite:///{out.folder / 'autotransfer.db'}" and out.surface == out.folder / "surface.json"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        tune_outputs(tmp_path / "file")
