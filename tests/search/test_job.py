"""A real study end to end at tiny scale: controls, search, resume, refusal, export → train, faults."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import ATTR, CONTROL_ATTR
from autotransfer.handback.export import export_payload, read_export, write_export
from autotransfer.pipeline.reproduce import train_from_config
from autotransfer.pipeline.tune import tune
from autotransfer.search.prepared import prepare_data
from autotransfer.search.run import run_search
from autotransfer.search.storage import open_storage
from autotransfer.search.study import control_trials, load_study, search_trials


@pytest.fixture
def finished_study(tiny_settings, storage_url, tmp_path):
    result = tune(
        tiny_settings,
        study_name="digits-tiny",
        storage=storage_url,
        export_dir=tmp_path / "exports",
        runs_dir=tmp_path / "runs",
    )
    return result


def test_study_end_to_end(finished_study, tiny_settings, storage_url):
    result = finished_study
    study = load_study("digits-tiny", open_storage(storage_url))
    # --trials counts finished search trials, controls excluded
    assert len(search_trials(study)) == 2
    controls = control_trials(study)
    assert sorted(t.user_attrs[CONTROL_ATTR] for t in controls) == ["probe", "probe", "scratch"]
    # controls are never pruned and were run to the full budget
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if CONTROL_ATTR in t.user_attrs:
            assert t.state == TrialState.COMPLETE
            assert max(t.intermediate_values) == 12
    # the first search trial is the enqueued prior protocol
    first_search = search_trials(study)[0]
    assert first_search.user_attrs["source"] == "prior"
    assert result.best_protocol is not None
    assert 0.0 <= result.test_score <= 1.0
    assert result.test_score > 0.2  # 10 classes: well above chance after a tiny budget
    assert result.export_path.exists() and result.model_path.exists()
    assert set(result.controls) == {"scratch", "probe"}
    assert isinstance(result.negative_transfer, bool)
    assert result.negative_transfer == (result.controls["scratch"] > result.val_score)
    trial = first_search
    for key in ("wall_time_s", "images_per_s", "peak_memory_mb", "freeze", "reinit", "lr"):
        assert key in trial.user_attrs
    # every completed trial records its validation loss, the tie-breaker between equal scores
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert math.isfinite(t.user_attrs["val_loss"]) and t.user_attrs["val_loss"] > 0
    json.dumps(result.to_dict())
    # the summary says how many images each score stands on, with its interval
    assert result.val_images == len(prepare_data(tiny_settings).val) and result.test_images >= 10
    assert any("the validation split holds" in note for note in result.notes)
    from rich.console import Console

    from autotransfer.report.summary import summary_table

    console = Console(width=200, record=True)
    console.print(summary_table(result))
    assert f"({result.test_images} images; 95% interval" in console.export_text()


def test_resume_runs_only_the_remainder(finished_study, tiny_settings, storage_url, tmp_path):
    study = load_study("digits-tiny", open_storage(storage_url))
    before = {t.number: (t.state, t.value) for t in study.trials}
    more = replace(tiny_settings, trials=3)
    tune(more, study_name="digits-tiny", storage=storage_url, export_dir=tmp_path / "e", runs_dir=tmp_path / "runs")
    study = load_study("digits-tiny", open_storage(storage_url))
    after = {t.number: (t.state, t.value) for t in study.trials}
    for number, state_value in before.items():
        if state_value[0] in (TrialState.COMPLETE, TrialState.PRUNED):
            assert after[number] == state_value  # every completed trial kept as it was
    assert len(search_trials(study)) == 3
    assert len(control_trials(study)) == 3  # controls are not re-run


def test_resume_with_other_data_is_refused(finished_study, tiny_settings, storage_url, tmp_path):
    other = replace(tiny_settings, target="builtin:digits?classes=0-4")
    with pytest.raises(UserError, match="other data|target"):
        tune(other, study_name="digits-tiny", storage=storage_url, export_dir=tmp_path / "e", runs_dir=tmp_path / "r")


class _NotesUI:
    """Keeps ``tune``'s notes; draws nothing."""

    def __init__(self) -> None:
        from autotransfer.search.progress import NullUI

        self.inner, self.notes = NullUI(), []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def note(self, text: str) -> None:
        self.notes.append(text)


RECORDED_WIN = "resuming with the study's recorded settings, not this run's"


def test_resume_says_which_recorded_settings_win(finished_study, tiny_settings, storage_url, tmp_path):
    """Issue 16, §6: a changed --steps, --prior, --prune, --pick or --warm-start on resume was ignored
    without a word. Now one line (a note, and a note in the result) says the recorded ones win."""
    changed = replace(tiny_settings, steps=24, prior="none", prune=False, pick="val")
    ui = _NotesUI()
    result = tune(
        changed,
        study_name="digits-tiny",
        storage=storage_url,
        export_dir=tmp_path / "exports",
        runs_dir=tmp_path / "runs",
        warm_start="digits-tiny",
        ui=ui,
    )
    (line,) = [n for n in ui.notes if n.startswith(RECORDED_WIN)]
    for needle in (
        "--steps 12 (this run: 24)",
        "--prior quadrant (this run: none)",
        "--prune on (this run: off)",
        "--pick ensemble (this run: val)",
        "no --warm-start (this run: digits-tiny;",
        "use another --study",
    ):
        assert needle in line, (needle, line)
    assert "\n" not in line and line in result.notes
    s = result.settings
    assert (s.steps, s.prior, s.prune, s.pick) == (12, "quadrant", True, "ensemble")  # the recorded ones ran
    # the same options: no such line
    ui = _NotesUI()
    result = tune(
        tiny_settings,
        study_name="digits-tiny",
        storage=storage_url,
        export_dir=tmp_path / "exports",
        runs_dir=tmp_path / "runs",
        ui=ui,
    )
    assert not [n for n in ui.notes + result.notes if n.startswith(RECORDED_WIN)]


def test_export_then_train_round_trips(finished_study, storage_url, tmp_path):
    study = load_study("digits-tiny", open_storage(storage_url))
    payload = export_payload(study)
    for fmt in ("yaml", "json"):
        path = write_export(payload, tmp_path / f"best.{fmt}", fmt)
        back = read_export(path)
        assert Protocol.from_dict(back["protocol"]) == Protocol.from_dict(payload["protocol"])
        assert back["settings"]["fingerprint"] == payload["settings"]["fingerprint"]
    timm_path = write_export(payload, tmp_path / "args.yaml", "timm")
    assert "lr:" in timm_path.read_text()
    metrics = train_from_config(read_export(tmp_path / "best.yaml"), tmp_path / "final", device="cpu")
    assert (tmp_path / "final" / "model.safetensors").exists()
    saved = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert saved["test_score"] == metrics["test_score"]
    # train --config writes the same model folder as tune: timm's format, with its card
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["autotransfer"]["scores"]["test"] == metrics["test_score"]
    assert config["autotransfer"]["study"] == "digits-tiny" and (tmp_path / "final" / "README.md").exists()
    # same protocol, seed, data and budget on CPU: the retrained model scores the same
    assert metrics["test_score"] == pytest.approx(finished_study.test_score, abs=1e-6)


def test_nan_trial_fails_with_reason_and_study_goes_on(tiny_settings, storage_url, tmp_path):
    from autotransfer.backbones import create_backbone
    from autotransfer.core.protocol import ProtocolSpace
    from autotransfer.search.objective import TrialRunner
    from autotransfer.search.prepared import prepare_data
    from autotransfer.search.prepared import split_batches as _batches
    from autotransfer.train import PrefixCache

    settings = tiny_settings.resolved(fingerprint="x", metric="accuracy", num_classes=10, n_train=112)
    settings = replace(settings, trials=2)
    prepared = prepare_data(settings)
    make = lambda: create_backbone(settings.model, num_classes=10)  # noqa: E731
    pre = make().preprocessing
    space = ProtocolSpace()
    runner = TrialRunner(
        settings=settings,
        space=space,
        make_backbone=make,
        train=_batches(prepared, "train", settings, pre),
        val=_batches(prepared, "val", settings, pre),
        prefix_cache=PrefixCache(),
    )
    study = optuna.create_study(direction="maximize", storage=open_storage(storage_url), study_name="nan")
    study.enqueue_trial(Protocol(log10_elr=6.0, momentum=0.0, freeze_frac=0.0).to_dict())
    run_search(study, runner, trials=2)
    first = study.trials[0]  # the enqueued, diverging protocol
    assert first.state == TrialState.FAIL
    assert "diverged" in first.user_attrs["fail_reason"]
    # (TPE over the wide space may draw another diverging protocol: each such trial fails the same way)
    for t in study.get_trials(states=(TrialState.FAIL,)):
        assert "diverged" in t.user_attrs["fail_reason"]
    assert len(search_trials(study)) == 2  # the study went on past the failure


def test_surface_prior_enqueues_its_centre_then_the_nearest_optima(tiny_settings, storage_url, tmp_path):
    from autotransfer.surface import SurfacePoint, SurfaceStore

    # three recorded studies of the lab model: two near the tiny digits task (log10 N ~2.1), one far
    store_path = tmp_path / "surface.json"
    recorded = {
        "near-a": (
            "builtin:mnist5k",
            2.1,
            0.30,
            Protocol(log10_elr=-0.9, freeze_frac=0.25, reinit_frac=0.5, bn_mode="frozen"),
        ),
        "near-b": (
            "builtin:animals",
            2.0,
            0.45,
            Protocol(log10_elr=-1.6, freeze_frac=0.5, reinit_frac=0.0, layer_decay=0.8),
        ),
        "far": ("builtin:elpv", 3.0, 0.95, Protocol(log10_elr=-2.0, freeze_frac=1.0)),
    }
    SurfaceStore(store_path).add(
        [
            SurfacePoint(
                study=name,
                target=target,
                model="fashion-source",
                n=int(10**x),
                seed=0,
                log10_n=x,
                similarity=s,
                protocol=p.to_dict(),
                score=0.8,
                metric="accuracy",
                excess=[],
            )
            for name, (target, x, s, p) in recorded.items()
        ]
    )
    settings = replace(tiny_settings, prior=f"surface:{store_path}", trials=3)
    tune(
        settings,
        study_name="digits-surface",
        storage=storage_url,
        export_dir=tmp_path / "e",
        runs_dir=tmp_path / "runs",
    )
    study = load_study("digits-surface", open_storage(storage_url))
    first = search_trials(study)[:3]
    # the surface's own protocol first, then the measured optima of the two nearest studies (never the far one)
    prior = study.user_attrs[ATTR["prior"]]
    candidates = [c["source"] for c in prior["candidates"]]
    assert prior["kind"] == "surface" and sorted(candidates) == ["surface:near-a", "surface:near-b"]
    assert [t.user_attrs["source"] for t in first] == ["prior", *candidates]
    for t in first[1:]:
        name = t.user_attrs["source"].removeprefix("surface:")
        assert Protocol.from_dict(t.params) == recorded[name][3]  # run as measured, outside the ranges or not
    assert any("nearest recorded studies" in line for line in prior["rationale"])


def test_n_larger_than_the_dataset_records_the_n_used(tiny_settings, storage_url, tmp_path):
    from autotransfer.data import load_dataset

    available = len(load_dataset("builtin:digits"))
    result = tune(
        replace(tiny_settings, n=available + 500, trials=1, pick="val"),
        study_name="capped",
        storage=storage_url,
        export_dir=tmp_path / "e",
        runs_dir=tmp_path / "r",
    )
    assert result.settings.n == available
    stored = load_study("capped", open_storage(storage_url)).user_attrs[ATTR["settings"]]
    assert stored["n"] == available
    assert any(f"N was capped at {available}" in note for note in result.notes)


def test_the_estimator_runs_on_the_trials_device(tiny_settings, storage_url, tmp_path, monkeypatch):
    import autotransfer.estimate as estimate

    seen = []
    real = estimate.TaskEstimator

    class Recording(real):
        def __init__(self, **kwargs):
            seen.append(kwargs.get("device"))
            super().__init__(**kwargs)

    monkeypatch.setattr(estimate, "TaskEstimator", Recording)
    tune(
        replace(tiny_settings, trials=1, pick="val", device="cpu"),
        study_name="device",
        storage=storage_url,
        export_dir=tmp_path / "e",
        runs_dir=tmp_path / "r",
    )
    assert seen == ["cpu"]
