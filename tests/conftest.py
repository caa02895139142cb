"""Test-wide settings: OpenMP threads must not busy-wait on a shared CPU (set before torch loads)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
