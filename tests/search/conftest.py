"""Shared tiny study settings: real data (sklearn digits), the fashion-source lab model, 16 px."""
from __future__ import annotations

import pytest

from autotransfer.search.settings import StudySettings



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
