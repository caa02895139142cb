"""The default pick is an ensemble (issue 14): the top distinct protocols retrained on train+val,
probabilities averaged; by default (``--deliver ensemble``) it is handed back as it is (issue 28). On a real tiny study: the folder holds every member and timm's
layout, ``load_model`` and ``evaluate`` reproduce tune's test score, ``export`` -> ``train
--config`` reproduces the ensemble, a resume keeps it, and a member path cannot leave its folder."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import autotransfer
from autotransfer.core.errors import UserError
from autotransfer.core.schema import ATTR
from autotransfer.handback.evaluate import evaluate_model
from autotransfer.handback.export import export_payload, not_expressed, read_export, write_export
from autotransfer.handback.pick import PICK_TOP, pick_candidates
from autotransfer.pipeline import tune as tune_module
from autotransfer.pipeline.reproduce import train_from_config
from autotransfer.pipeline.tune import tune
from autotransfer.search.storage import open_storage
from autotransfer.search.study import load_study


@pytest.fixture(scope="module")
def ensemble_study(tmp_path_factory):
    from tests.search.conftest import tiny

    tmp = tmp_path_factory.mktemp("ensemble")
    settings = replace(tiny(), trials=3)  # the default deliverable: the members themselves
    url = f"sqlite:///{tmp / 'e.db'}"
    result = tune(settings, study_name="ens", storage=url, export_dir=tmp / "exports", runs_dir=tmp / "runs")
    return result, url, tmp


def test_the_default_pick_retrains_the_top_protocols_and_averages_them(ensemble_study):
    result, url, _ = ensemble_study
    study = load_study("ens", open_storage(url))
    top = [t.number for t in pick_candidates(study, PICK_TOP)]
    assert result.pick["rule"] == "ensemble" and result.pick["members"] == top and len(top) == PICK_TOP
    assert result.best_trial == top[0] and result.pick["trainings"] == PICK_TOP - 1
    final = study.user_attrs[ATTR["final"]]
    assert final["members"] == top and len(final["member_test_scores"]) == PICK_TOP
    folder = result.model_path
    config = json.loads((folder / "config.json").read_text())
    assert config["autotransfer"]["ensemble"]["members"] == [".", "members/2", "members/3"]
    assert config["autotransfer"]["scores"]["test"] == pytest.approx(result.test_score)
    assert "## Ensemble" in (folder / "README.md").read_text()
    for sub in ("members/2", "members/3"):  # each member is a model folder of its own
        assert (folder / sub / "config.json").is_file() and (folder / sub / "model.safetensors").is_file()
    assert any(n.startswith("pick: an ensemble of the top 3") for n in result.notes)


def test_load_model_and_evaluate_reproduce_the_ensembles_test_score(ensemble_study):
    result, _, _ = ensemble_study
    model = autotransfer.load_model(result.model_path, device="cpu")
    assert len(model.members) == PICK_TOP
    info = evaluate_model(model)  # the study's own test split
    assert info.score == pytest.approx(result.test_score, abs=1e-6)
    # the ensemble's probabilities are the mean of its members' own
    images = np.random.default_rng(0).integers(0, 255, size=(5, 24, 24, 3), dtype=np.uint8)
    alone = [autotransfer.load_model(result.model_path / sub, device="cpu") for sub in ("members/2", "members/3")]
    from autotransfer.handback.predict import Predictor

    member1 = Predictor(model.model, model.classes_, model.preprocessing, device="cpu")  # the folder alone: member 1
    expected = (member1.predict_proba(images) + sum(m.predict_proba(images) for m in alone)) / 3
    np.testing.assert_allclose(model.predict_proba(images), expected, atol=1e-6)


def test_export_then_train_config_reproduces_the_ensemble(ensemble_study, tmp_path):
    result, url, _ = ensemble_study
    study = load_study("ens", open_storage(url))
    payload = export_payload(study)
    assert [m["trial"] for m in payload["members"]] == result.pick["members"] and payload["pick"] == "ensemble"
    assert any("averages 3 networks" in line for line in not_expressed(payload, "timm"))
    reproduced = train_from_config(read_export(write_export(payload, tmp_path / "e.yaml")), out_dir=tmp_path / "again")
    assert reproduced["members"] == PICK_TOP
    assert reproduced["test_score"] == pytest.approx(result.test_score, abs=1e-6)
    assert len(autotransfer.load_model(tmp_path / "again", device="cpu").members) == PICK_TOP


def test_a_resumed_study_keeps_its_ensemble(ensemble_study, monkeypatch):
    result, url, tmp = ensemble_study
    monkeypatch.setattr(tune_module, "train_ensemble", lambda *a, **k: pytest.fail("retrained a recorded ensemble"))
    again = tune(result.settings, study_name="ens", storage=url, export_dir=tmp / "exports", runs_dir=tmp / "runs")
    assert again.test_score == result.test_score and again.pick == result.pick


def test_an_ensemble_member_outside_its_folder_is_refused(ensemble_study, tmp_path):
    import shutil

    result, _, _ = ensemble_study
    copy = tmp_path / "model"
    shutil.copytree(result.model_path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["autotransfer"]["ensemble"]["members"] = [".", "../elsewhere"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="outside the model folder"):
        autotransfer.load_model(copy, device="cpu")
