"""``pipeline.model_choice``: the winner of a race of candidate models (pure), and a real race of
two lab-sized candidates on digits whose winner's study is continued and handed back."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from autotransfer.backbones.model_dir import read_model_config
from autotransfer.core.errors import InvalidValueError
from autotransfer.core.schema import ATTR
from autotransfer.pipeline.model_choice import Contender, choose_winner, race_and_tune
from autotransfer.search.storage import open_storage

from ..search.conftest import tiny


def _raced(*scores: float | None, images: int = 30) -> list[Contender]:
    return [Contender(f"m{i}", i, score=s, val_images=images) for i, s in enumerate(scores)]


def test_a_clearly_better_race_score_wins():
    winner, reason = choose_winner(_raced(0.60, 0.90))
    assert winner.model == "m1" and "best race score" in reason


def test_within_the_noise_of_the_validation_split_the_estimators_first_wins():
    # 0.70 vs 0.733 on 30 images: one image apart, far inside one SE (~0.12)
    winner, reason = choose_winner(_raced(0.70, 0.7333))
    assert winner.model == "m0" and "within noise" in reason
    # the same gap on 3,000 images is outside the noise
    assert choose_winner(_raced(0.70, 0.7333, images=3000))[0].model == "m1"


def test_a_race_without_a_completed_trial_falls_back_to_the_order():
    assert choose_winner(_raced(None, None))[0].model == "m0"
    assert choose_winner(_raced(None, 0.5))[0].model == "m1"
    with pytest.raises(InvalidValueError):
        choose_winner([])


def test_two_candidates_race_and_the_winners_study_is_continued(tmp_path):
    settings = replace(tiny(), resolution=32, trials=200)  # the budget, not --trials, ends each stage
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    ranked = [
        Contender("fashion-source", 0, evidence={"logme": 1.0}),
        Contender("efficientnet_lite0", 1, evidence={"logme": 0.5}),
        Contender("efficientnet_lite1", 2, dropped="dominated by efficientnet_lite0"),
    ]
    result = race_and_tune(
        ranked,
        settings,
        study_name="choice",
        storage=storage,
        ranking_s=1.0,
        runs_dir=tmp_path / "runs",
        export_dir=tmp_path / "exports",
    )
    choice = result.model_choice
    assert choice is not None
    by_model = {c["model"]: c for c in choice["candidates"]}
    assert by_model["efficientnet_lite1"]["study"] is None  # dropped: never raced
    raced = [by_model["fashion-source"], by_model["efficientnet_lite0"]]
    assert all(c["study"] and c["trials"] >= 1 and c["training_s"] > 0 for c in raced)
    assert [c["chosen"] for c in raced].count(True) == 1
    chosen = next(c for c in raced if c["chosen"])
    assert choice["chosen"] == chosen["model"] == result.settings.model
    # the winner's race study was continued (more trials than the race ran), and handed back
    assert result.study_name == chosen["study"]
    store = open_storage(storage)
    study = optuna.load_study(study_name=chosen["study"], storage=store)
    assert study.user_attrs[ATTR["model_choice"]]["chosen"] == chosen["model"]
    assert len(optuna.load_study(study_name=chosen["study"], storage=store).trials) > chosen["trials"]
    config = read_model_config(result.model_path)
    assert config["autotransfer"]["source_spec"] == chosen["model"]  # the folder names the chosen model
    # the whole job's ledger: the ranking, each race, then the continuation's stages
    ledger = result.ledger
    assert ledger is not None
    assert {"ranking candidates", "race fashion-source", "race efficientnet_lite0", "publish"} <= set(ledger["stages"])
    # the auto budget: 1.5x a default study of the first raced model, within the slack of the plan
    unit = by_model["fashion-source"]["training_s"]
    first_race = by_model["fashion-source"]["seconds"]
    assert choice["budget_s"] >= 1.0 + 7.5 * unit - 1e-6
    assert choice["budget_s"] <= max(1.0 + 7.5 * unit, 1.0 + first_race + 6 * unit) + 1.0


def test_tune_with_models_ranks_races_and_reports_every_candidate(tmp_path, monkeypatch):
    import autotransfer
    from autotransfer.estimate.estimator import TaskEstimator

    fits: list[str] = []
    original = TaskEstimator.fit

    def counted(self, dataset, model, **kwargs):
        fits.append(str(getattr(model, "spec", model)))
        return original(self, dataset, model, **kwargs)

    monkeypatch.setattr(TaskEstimator, "fit", counted)
    from autotransfer.search.progress import NullUI

    class Recorder(NullUI):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def stage(self, text: str) -> None:
            self.lines.append(text)

        def note(self, text: str) -> None:
            self.lines.append(text)

    seen = Recorder()
    result = autotransfer.tune(
        "builtin:digits",
        out=tmp_path,
        models="fashion-source,efficientnet_lite0",
        resolution=32,
        progress=seen,
        **{k: getattr(tiny(), k) for k in ("n", "batch_size", "steps", "eval_every", "views", "device")},
    )
    # the job reports as it goes: the ranking, each race, the choice, then the winner's stages
    assert any(line.startswith("ranking 2 candidate models") for line in seen.lines)
    assert sum(line.startswith("race: ") and "trainings)" in line for line in seen.lines) == 2
    assert any(line.startswith("model: ") for line in seen.lines) and "controls + search" in seen.lines
    choice = result.model_choice
    assert choice is not None and choice["chosen"] == result.settings.model
    assert len(fits) == 2  # one estimate per candidate: each race's study starts from the ranking's profile
    evidence = {c["model"]: c["evidence"] for c in choice["candidates"]}
    assert set(evidence) == {"fashion-source", "efficientnet_lite0"}
    assert all(e["images_per_s"] > 0 and e["nleep"] is not None for e in evidence.values())
    assert all(0.0 <= e["forecast"]["interval"][0] <= e["forecast"]["interval"][1] <= 1.0 for e in evidence.values())
    assert any("forecast before any trial" in line for line in seen.lines)
    assert result.ledger is not None and result.ledger["stages"]["ranking candidates"] > 0
    payload = result.to_dict()
    assert payload["model_choice"]["chosen"] == choice["chosen"]
    from autotransfer.report.summary import model_choice_rows

    rows = dict(model_choice_rows(choice))
    assert rows["model"].startswith(choice["chosen"])
    assert sum(value.endswith("chosen") for value in rows.values()) == 1
    # the report and the dashboard's note show every candidate, and the whole job's ledger
    from autotransfer.report.dashboard import study_note
    from autotransfer.report.html import report_html
    from autotransfer.search.storage import open_storage as open_store

    study = optuna.load_study(study_name=result.study_name, storage=open_store(result.storage))
    html, note = report_html(study), study_note(study)
    assert "Which model" in html and "Which model" in note
    assert all(model in html and model in note for model in evidence)
    assert "ranking candidates" in html


def test_bad_candidate_lists_are_one_clear_line(tmp_path):
    import autotransfer
    from autotransfer.core.errors import UserError

    with pytest.raises(UserError, match="unknown model 'no-such-net'"):
        autotransfer.tune("builtin:digits", out=tmp_path, models="fashion-source,no-such-net")
    with pytest.raises(UserError, match="not both"):
        autotransfer.tune("builtin:digits", out=tmp_path, model="fashion-source", models="auto")
    with pytest.raises(UserError, match="drop --workers"):
        autotransfer.tune("builtin:digits", out=tmp_path, models="auto", workers=2)
