"""Shared tiny study settings: real data (sklearn digits), the fashion-source lab model, 16 px;
``make_study``, a real tiny study in a fresh SQLite storage."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from autotransfer.core.protocol import ProtocolSpace
from autotransfer.core.settings import StudySettings
from autotransfer.prior import recommended_protocol
from autotransfer.search.prepared import PreparedData, prepare_data
from autotransfer.search.run import validation_counts
from autotransfer.search.storage import open_storage
from autotransfer.search.study import create_study


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
        fingerprint=prepared.fingerprint,
        metric="accuracy",
        num_classes=10,
        n_train=len(prepared.train),
        **validation_counts(prepared, "accuracy"),
    )
    return resolved, prepared


@pytest.fixture
def make_study(tiny_settings, storage_url):
    """``make_study(name, trials, enqueue=k)``: a real tiny study (digits, fashion-source, 16 px), no
    pruning; with ``enqueue``, the survey's recommended protocol (which trains well) queued first ``k`` times."""

    def make(name: str, trials: int, enqueue: int = 0, **changes) -> optuna.Study:
        settings = replace(tiny_settings, trials=trials, prune=False, **changes)
        settings, prepared = prepared_tiny(settings)
        queued = [(recommended_protocol(), {"source": "survey:recommended"})] * enqueue
        return create_study(
            name,
            open_storage(storage_url, heartbeat=False),
            settings,
            profile=None,
            prior=None,
            space=ProtocolSpace(),
            enqueue=queued,
        )

    return make
