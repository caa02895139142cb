"""A tiny real study shared by the report tests: builtin:digits, the fashion-source lab model, 16 px."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from autotransfer.core.settings import StudySettings
from tests.search.conftest import tiny


@dataclass
class MadeStudy:
    """Where the shared study lives."""

    name: str
    storage_url: str
    workdir: Path


def tiny_settings(trials: int = 4) -> StudySettings:
    # every search trial completes (no pruning): enough points for parameter importances
    return replace(tiny(), trials=trials, prune=False)


def make_study(name: str, storage_url: str, workdir: Path, trials: int = 4) -> None:
    """Run a real tiny study with ``tune``: estimate, prior, controls + search, retrain, test, export."""
    from autotransfer.pipeline.tune import tune

    tune(
        tiny_settings(trials),
        study_name=name,
        storage=storage_url,
        export_dir=workdir / "exports",
        runs_dir=workdir / "runs",
    )


@pytest.fixture(scope="session")
def made_study(tmp_path_factory) -> MadeStudy:
    workdir = tmp_path_factory.mktemp("report-study")
    url = f"sqlite:///{workdir / 'studies.db'}"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_study("digits-report", url, workdir)
    finally:
        torch.set_num_threads(before)
    return MadeStudy(name="digits-report", storage_url=url, workdir=workdir)


# --- a synthetic study with known numbers (for the info step) ---------------------------------

SYN_GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4"]


def synthetic_study(*, scratch=(0.30, 0.20, 0.10), probe=(0.15, 0.25), search=None, with_final=True):
    """An in-memory autotransfer study with hand-set trials (no training): exact numbers to check.

    ``search``: ``[(Protocol, value or None for pruned, intermediate values, source)]``.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    from autotransfer.core.protocol import Protocol, ProtocolSpace
    from autotransfer.core.schema import ATTR
    from autotransfer.prior.quadrant import quadrant_prior

    settings = StudySettings(
        target="builtin:digits",
        model="fashion-source",
        n=160,
        resolution=16,
        batch_size=16,
        steps=12,
        eval_every=4,
        metric="accuracy",
        num_classes=10,
        n_train=112,
        fingerprint="f" * 64,
    )
    space = ProtocolSpace()
    excess = [0.0, 0.05, 0.1, 0.3, 0.5]
    prior = quadrant_prior(2.2, 0.6, excess, len(SYN_GROUPS), num_classes=10)
    study = optuna.create_study(direction="maximize", study_name="synthetic")
    study.set_user_attr(ATTR["settings"], settings.to_dict())
    study.set_user_attr(ATTR["space"], space.to_dict())
    study.set_user_attr(ATTR["prior"], prior.to_dict())
    study.set_user_attr(
        ATTR["profile"],
        {
            "num_groups": 5,
            "metric": "accuracy",
            "similarity": 0.6,
            "size": {
                "images": 160,
                "classes": 10,
                "per_class_min": 16,
                "per_class_median": 16.0,
                "per_class_max": 16,
                "imbalance": 1.0,
            },
            "divergence": {
                "method": "bn-w2",
                "groups": SYN_GROUPS,
                "raw": [0.1, 0.2, 0.3, 0.5, 0.7],
                "reference": [0.1, 0.15, 0.2, 0.2, 0.2],
                "excess": excess,
            },
        },
    )
    dists = {name: FloatDistribution(r.low, r.high, log=r.log) for name, r in space.ranges.items()} | {
        "bn_mode": CategoricalDistribution(space.bn_modes),
        "schedule": CategoricalDistribution(space.schedules),
    }

    def add(protocol, value, inter, attrs, state=TrialState.COMPLETE):
        f, r = protocol.integers(5)
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params=protocol.to_dict(),
                distributions=dists,
                intermediate_values=inter,
                user_attrs={"freeze": f, "reinit": r, "num_groups": 5, **attrs},
            )
        )

    for i, v in enumerate(scratch):
        add(
            Protocol(log10_elr=-0.5 + 0.5 * i, freeze_frac=0.0, reinit_frac=1.0, head_lr_mult=1.0),
            v,
            {4: v / 2, 12: v},
            {"control": "scratch", "source": f"control:scratch#{i}"},
        )
    for i, v in enumerate(probe):
        add(
            Protocol(log10_elr=-2.0 + i, freeze_frac=1.0),
            v,
            {4: v / 2, 12: v},
            {"control": "probe", "source": f"control:probe#{i}"},
        )
    if search is None:
        search = [
            (prior.centre, 0.40, {4: 0.3, 8: 0.35, 12: 0.40}, "prior"),
            (
                Protocol(log10_elr=-1.5, head_lr_mult=10.0, freeze_frac=0.4, reinit_frac=0.0),
                0.35,
                {4: 0.2, 12: 0.35},
                "survey:recommended",
            ),
            (
                Protocol(log10_elr=-0.5, head_lr_mult=3.0, freeze_frac=0.0, reinit_frac=0.5),
                None,
                {4: 0.05},
                "survey:less-similar",
            ),
            (
                Protocol(log10_elr=-1.0, head_lr_mult=20.0, freeze_frac=0.6, reinit_frac=0.25, momentum=0.8),
                0.45,
                {4: 0.3, 12: 0.45},
                "search",
            ),
            (
                Protocol(log10_elr=-2.5, head_lr_mult=5.0, freeze_frac=0.2, reinit_frac=0.1, weight_decay=1e-3),
                0.20,
                {4: 0.1, 12: 0.20},
                "search",
            ),
        ]
    for protocol, value, inter, source in search:
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        add(protocol, value, inter, {"source": source}, state)
    if with_final:
        best = max(
            (t for t in study.trials if t.value is not None and t.user_attrs.get("control") != "scratch"),
            key=lambda t: t.value,
        )
        study.set_user_attr(ATTR["final"], {"trial": best.number, "test_score": 0.42, "model": None})
    return study
