"""Shared estimator fixtures: the fashion-source laboratory model."""

from __future__ import annotations

import pytest

from autotransfer.backbones import create_backbone


@pytest.fixture(scope="module")
def lab():
    """The fashion-source laboratory (5 source classes), created once per test module."""
    return create_backbone("fashion-source", num_classes=5)
