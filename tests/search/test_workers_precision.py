"""Issue 19 §7: each trial records its device and precision; a worker refuses a study whose
trials ran at another precision (faked here: no GPU), unless mixing is asked for."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import ProtocolSpace
from autotransfer.core.schema import PRECISION_ATTR
from autotransfer.search.objective import MIXED_PRECISION_ENV, TrialRunner, precision_refusal, study_precisions
from autotransfer.search.storage import open_storage
from autotransfer.search.study import load_study, read_settings
from autotransfer.search.workers import run_worker

from .test_workers import _one_line


def _ran(study: optuna.Study, **user_attrs) -> None:
    """A finished trial that another worker ran, with these attributes."""
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=user_attrs))


def test_worker_refuses_a_study_whose_trials_ran_in_bf16(make_study, storage_url):
    study = make_study("bf16-study", trials=2)
    _ran(study, device="cuda:0", precision="bf16-autocast")
    with pytest.raises(UserError) as err:
        run_worker("bf16-study", storage_url, device="cpu")
    text = _one_line(err)
    assert "refused" in text and "'bf16-study'" in text and "bf16-autocast on cuda:0" in text
    assert "fp32 on cpu" in text and "--device cuda" in text and MIXED_PRECISION_ENV in text
    assert len(load_study("bf16-study", open_storage(storage_url)).trials) == 1  # nothing ran


def test_trials_from_before_the_attribute_count_by_their_device(make_study):
    study = make_study("old-trials", trials=2)
    _ran(study, device="cpu")  # recorded before PRECISION_ATTR: fp32
    _ran(study, device="cuda:0")  # unknown: bf16 autocast depended on the GPU then
    assert study_precisions(study) == {"fp32": {"cpu"}}
    assert precision_refusal(study, "fp32", "cpu") is None
    text = precision_refusal(study, "bf16-autocast", "cuda")
    assert "fp32 on cpu" in text and "--device cpu" in text


def test_mixing_is_allowed_when_asked_for(make_study, monkeypatch):
    study = make_study("mixed", trials=2)
    _ran(study, device="cuda:0", precision="bf16-autocast")
    monkeypatch.setenv(MIXED_PRECISION_ENV, "1")
    assert precision_refusal(study, "fp32", "cpu") is None


def test_a_trial_records_its_precision_and_is_refused_and_requeued(make_study):
    """The runner's own check (a worker that started alongside one at another precision, or a
    resumed ``tune``): the trial records fp32 on cpu first, is refused, and its enqueued protocol
    goes back to the queue."""
    study = make_study("race", trials=2, enqueue=1)
    _ran(study, device="cuda:0", precision="bf16-autocast")
    waiting = len(study.get_trials(states=(TrialState.WAITING,)))
    runner = TrialRunner(
        settings=read_settings(study),
        space=ProtocolSpace(),
        make_backbone=lambda: pytest.fail("a refused trial builds no model"),
        train=None,
        val=None,
    )
    trial = study.ask()
    with pytest.raises(UserError, match="refused.*bf16-autocast on cuda:0"):
        runner(trial)
    study.tell(trial, state=TrialState.FAIL)
    failed = study.trials[trial.number]
    assert failed.user_attrs[PRECISION_ATTR] == "fp32" and failed.user_attrs["device"] == "cpu"
    assert "refused" in failed.user_attrs["fail_reason"]
    assert len(study.get_trials(states=(TrialState.WAITING,))) == waiting  # queued again


def test_a_resumed_tune_refuses_a_study_run_at_another_precision(tiny_settings, storage_url, tmp_path):
    """``tune`` resuming in its own process checks before any trial runs (no failed trial left)."""
    from dataclasses import replace

    from autotransfer.pipeline.tune import tune

    settings = replace(tiny_settings, trials=1, pick="val")
    kwargs = dict(study_name="resumed", storage=storage_url, export_dir=tmp_path / "e", runs_dir=tmp_path / "r")
    tune(settings, **kwargs)
    study = load_study("resumed", open_storage(storage_url))
    _ran(study, device="cuda:0", precision="bf16-autocast")  # another worker ran one on a GPU
    before = len(study.trials)
    with pytest.raises(UserError, match="bf16-autocast on cuda:0"):
        tune(replace(settings, trials=3), **kwargs)
    assert len(load_study("resumed", open_storage(storage_url)).trials) == before
