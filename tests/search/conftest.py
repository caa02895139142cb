"""Shared tiny study settings: real data (sklearn digits), the fashion-source lab model, 16 px."""
from __future__ import annotations

import pytest

from autotransfer.search.run import validation_counts
from autotransfer.search.prepared import PreparedData, prepare_data
from autotransfer.core.settings import StudySettings



@pytest.fixture
def tiny_settings() -> StudySettings:
    return tiny()


def tiny() -> StudySettings:
    """The tiny study's settings (also for module-scoped fixtures)."""
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


def prepared_tiny(settings: StudySettings) -> tuple[StudySettings, PreparedData]:
    """The tiny target's data and ``settings`` resolved against it (accuracy, 10 classes), as
    ``tune`` resolves them before creating a study."""
    prepared = prepare_data(settings)
    resolved = settings.resolved(
        fingerprint=prepared.fingerprint, metric="accuracy", num_classes=10, n_train=len(prepared.train),
        **validation_counts(prepared, "accuracy"),
    )
    return resolved, prepared
