"""Test-wide settings: OpenMP threads must not busy-wait on a shared CPU (set before torch loads),
and every test runs on one torch thread (2 shared cores) unless its package overrides ``_torch_threads``."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
