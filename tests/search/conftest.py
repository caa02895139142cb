"""Shared tiny study settings: real data (sklearn digits), the fashion-source lab model, 16 px."""
from __future__ import annotations

import pytest
import torch

from autotransfer.search.settings import StudySettings


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_settings() -> StudySettings:
    return StudySettings(
        target="builtin:digits",
        model="fashion-source",
        n=160,
        seed=0,
        resolution=16,
        batch_size=16,
        steps=12,
        eval_every=4,
        views=2,
        trials=2,
        device="cpu",
    )


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"
