"""``tune(time_budget=...)`` end to end at tiny scale: the whole job fits its budget, a trial the
budget stops is still usable but ranks after complete ones, and a budget that cannot afford the
retrain hands back the best trials' own models, which load and score as recorded."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

import autotransfer.pipeline.plan as plan_module
from autotransfer.backbones import create_backbone
from autotransfer.backbones.model_dir import read_model_config
from autotransfer.core.budget import BUDGET_SLACK
from autotransfer.core.protocol import ProtocolSpace
from autotransfer.core.schema import BUDGET_STOP_ATTR, KEPT_MODEL_ATTR, SOURCE_ATTR
from autotransfer.handback.pick import pick_candidates
from autotransfer.pipeline.tune import tune
from autotransfer.prior import recommended_protocol
from autotransfer.search.objective import TrialRunner
from autotransfer.search.prepared import split_batches
from autotransfer.search.storage import open_storage
from autotransfer.search.study import create_study, load_study

from .conftest import prepared_tiny


def test_the_whole_job_fits_its_budget_and_the_ledger_says_where_it_went(tiny_settings, storage_url, tmp_path):
    budget = 60.0
    result = tune(
        replace(tiny_settings, trials=500),  # the budget, not --trials, ends the search
        study_name="budgeted",
        storage=storage_url,
        export_dir=tmp_path / "exports",
        runs_dir=tmp_path / "runs",
        time_budget=f"{budget:g}s",
    )
    ledger, plan = result.ledger, result.plan
    assert ledger is not None and plan is not None
    assert plan["budget_s"] == budget and plan["trials"] >= 1
    if plan["left_s"] >= 2 * plan["training_s"]:
        # a budget that leaves room for the search: the whole job ends within 10% of it
        assert ledger["total_s"] <= budget * (1 + BUDGET_SLACK)
    else:  # loading and estimating spent it (a loaded machine): one trial still runs, and says so
        assert result.n_search_trials == 1 and any("one trial runs anyway" in n for n in plan["notes"])
    assert {"data + estimate", "timing", "controls", "search", "final model", "publish"} <= set(ledger["stages"])
    assert ledger["in_trainings"]["total"] == pytest.approx(ledger["total_s"] / ledger["training_s"], rel=0.01)
    assert 1 <= result.n_search_trials < 500
    assert result.model_path is not None and (result.model_path / "model.safetensors").exists()
    study = load_study("budgeted", open_storage(storage_url))
    assert study.user_attrs["autotransfer.ledger"]["total_s"] == ledger["total_s"]
    assert not (tmp_path / "runs" / ".budgeted.trials").exists()  # kept trial models cleared after saving


def test_a_budget_without_room_for_the_retrain_hands_back_the_trials_own_models(
    tiny_settings, storage_url, tmp_path, monkeypatch
):
    monkeypatch.setattr(plan_module, "MIN_SEARCH_TRAININGS", 1e9)  # no budget affords the retrain
    result = tune(
        replace(tiny_settings, trials=3),
        study_name="own-models",
        storage=storage_url,
        export_dir=tmp_path / "exports",
        runs_dir=tmp_path / "runs",
        time_budget=120,
    )
    assert result.plan is not None and not result.plan["retrain"]
    assert result.trained_on == "train"
    config = read_model_config(result.model_path)
    ensemble = config["autotransfer"]["ensemble"]
    assert ensemble["trained_on"] == ["train"] * len(ensemble["members"]) and len(ensemble["members"]) >= 2
    card = (result.model_path / "README.md").read_text()
    assert "each the study's own trial model, trained on the train split" in card
    study = load_study("own-models", open_storage(storage_url))
    assert any(t.user_attrs.get(KEPT_MODEL_ATTR) for t in study.trials)
    # what the folder holds scores what tune recorded on the test split
    import autotransfer

    model = autotransfer.load_model(result.model_path)
    assert autotransfer.evaluate_model(model).score == pytest.approx(result.test_score, abs=1e-6)


def test_a_trial_the_budget_stops_completes_with_its_step_and_ranks_after_complete_ones(tiny_settings, storage_url):
    settings, prepared = prepared_tiny(replace(tiny_settings, prune=False))
    study = create_study(
        "stopped",
        open_storage(storage_url, heartbeat=False),
        settings,
        profile=None,
        prior=None,
        space=ProtocolSpace(),
        enqueue=[
            (recommended_protocol(), {SOURCE_ATTR: "a"}),
            (replace(recommended_protocol(), log10_elr=-1.0), {SOURCE_ATTR: "b"}),
        ],
    )

    def make_backbone():
        return create_backbone(settings.model, num_classes=settings.num_classes)

    pre = make_backbone().preprocessing
    steps = []

    def runner(stop):
        return TrialRunner(
            settings=settings,
            space=ProtocolSpace(),
            make_backbone=make_backbone,
            train=split_batches(prepared, "train", settings, pre),
            val=split_batches(prepared, "val", settings, pre),
            stop=stop,
        )

    study.optimize(runner(lambda: False), n_trials=1)
    study.optimize(runner(lambda: steps.append(1) or len(steps) >= 5), n_trials=1)
    full, cut = study.trials
    assert full.state == cut.state == optuna.trial.TrialState.COMPLETE
    assert BUDGET_STOP_ATTR not in full.user_attrs and cut.user_attrs[BUDGET_STOP_ATTR] == 5
    assert [c.number for c in pick_candidates(study)] == [full.number, cut.number]
