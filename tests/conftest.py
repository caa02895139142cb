"""Test-wide settings: OpenMP threads must not busy-wait on a shared CPU (set before torch loads),
and every test runs on one torch thread (2 shared cores) unless its package overrides ``torch_thread_count``."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# nothing downloads in tests: timm / huggingface_hub fail at once instead of reaching for the hub
# (timm.create_model("local-dir:...", pretrained=True) reads a local folder and needs no network)
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def torch_thread_count() -> int:
    """Torch threads for each test; a package's conftest overrides this fixture to change it."""
    return 1


@pytest.fixture(autouse=True)
def _torch_threads(torch_thread_count):
    before = torch.get_num_threads()
    torch.set_num_threads(torch_thread_count)
    yield
    torch.set_num_threads(before)
