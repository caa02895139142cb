"""Self-training on unlabelled target images (issue 18 §2), on real tiny studies (digits,
fashion-source, 16 px) whose unlabelled images are digits outside the study's subsample and the
judge set (``data.unlabelled_pool``, as the benchmark builds them):

- pseudo-labels respect the threshold, through a real teacher;
- self-training never replaces a better teacher (an adversarial teacher whose confident labels
  are all wrong): the teacher is handed back and the summary says "not kept";
- students that win are handed back in the model-folder format, and the card says so;
- a study with ``--unlabelled`` resumes without redoing it, and redoes it after a run that died
  in the middle of it;
- a bad ``--unlabelled`` path is one line, exit 2, before any work.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import autotransfer
from autotransfer.core.errors import UserError
from autotransfer.core.schema import ATTR
from autotransfer.data import load_dataset, unlabelled_pool
from autotransfer.handback import self_training as st
from autotransfer.handback.evaluate import evaluate_model
from autotransfer.pipeline import tune as tune_module
from autotransfer.pipeline.tune import tune
from autotransfer.search.storage import open_storage
from autotransfer.search.study import load_study
from autotransfer.train import pseudo as pseudo_module

POOL = 300
#: At 36 steps the tiny study's teachers put about half the pool above this (10 classes).
THRESHOLD = 0.25


def _settings(**changes):
    from tests.search.conftest import tiny

    return replace(tiny(), trials=2, **changes)


def _pool():
    return unlabelled_pool(load_dataset("builtin:digits"), 160, 0, POOL)


def _run(tmp, name, settings, pool, **kw):
    url = f"sqlite:///{tmp / 'st.db'}"
    return tune(
        settings,
        study_name=name,
        storage=url,
        export_dir=tmp / "exports",
        runs_dir=tmp / "runs",
        unlabelled=pool,
        **kw,
    ), url


@pytest.fixture(scope="module")
def kept_study(tmp_path_factory):
    """A study whose students are kept (the decision forced: the mechanics of handing them back
    are under test here, not whether they win), with every pseudo-label selection recorded."""
    tmp = tmp_path_factory.mktemp("self-trained")
    selections = []
    real = pseudo_module.select_pseudo_labels

    def recording(probs, threshold):
        out = real(probs, threshold)
        selections.append((np.asarray(probs), threshold, out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pseudo_module, "select_pseudo_labels", recording)
        mp.setattr(st, "keep_student", lambda student, teacher: True)
        result, url = _run(tmp, "kept", _settings(steps=36, eval_every=12, pseudo_threshold=THRESHOLD), _pool())
    return result, url, tmp, selections


def test_pseudo_labels_through_a_real_teacher_respect_the_threshold(kept_study):
    result, _, _, selections = kept_study
    assert len(selections) == 2  # phase 1 (the train-split teachers), phase 2 (the handed-back model)
    for probs, threshold, pseudo in selections:
        assert threshold == THRESHOLD and probs.shape == (POOL, 10)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)  # mean softmax
        assert 0 < len(pseudo.indices) < POOL  # the threshold binds
        assert np.all(pseudo.confidences >= THRESHOLD)
        assert pseudo.indices.tolist() == np.flatnonzero(probs.max(1) >= THRESHOLD).tolist()
        assert pseudo.labels.tolist() == probs.argmax(1)[pseudo.indices].tolist()
    record = result.self_training
    first = selections[0][2]
    assert record["kept_images"] == len(first.indices) and record["offered"] == POOL
    assert sum(record["per_class"].values()) == len(first.indices) and len(record["per_class"]) == 10
    assert record["final"]["kept_images"] == len(selections[1][2].indices)


def test_kept_students_are_handed_back_in_the_model_folder_format(kept_study):
    result, url, _, _ = kept_study
    record = result.self_training
    k = len(result.pick["members"])
    assert record["kept"] and record["threshold"] == THRESHOLD and record["members"] == result.pick["members"]
    assert record["trainings"] == 3 * k and record["seconds"] > 0
    assert record["teacher_val"] is not None and record["student_val"] is not None
    study = load_study("kept", open_storage(url))
    assert study.user_attrs[ATTR["self_training"]] == record
    final = study.user_attrs[ATTR["final"]]
    assert final["self_training"] == {"unlabelled": record["unlabelled"], "threshold": THRESHOLD}
    assert "train+val+pseudo" in final["member_trained_on"]
    assert final["test_score"] == pytest.approx(result.test_score)
    config = json.loads((result.model_path / "config.json").read_text())
    assert config["autotransfer"]["self_training"]["kept"] is True
    if k > 1:
        assert config["autotransfer"]["ensemble"]["trained_on"] == final["member_trained_on"]
    card = (result.model_path / "README.md").read_text()
    assert "## Self-training" in card and "Kept:" in card
    model = autotransfer.load_model(result.model_path, device="cpu")
    assert len(model.members) == k
    assert evaluate_model(model).score == pytest.approx(result.test_score, abs=1e-6)
    line = next(n for n in result.notes if n.startswith("self-training:"))
    assert (
        line.startswith("self-training: kept (student ")
        and f"of {POOL:,} unlabelled images at or above {THRESHOLD:g}" in line
    )


def test_train_config_says_it_does_not_reproduce_self_training(kept_study, tmp_path):
    from autotransfer.handback.export import export_payload
    from autotransfer.pipeline.reproduce import train_from_config

    result, url, _, _ = kept_study
    payload = export_payload(load_study("kept", open_storage(url)))
    assert [m["trained_on"] for m in payload["members"]] == list(result.self_training["final"]["member_trained_on"])
    metrics = train_from_config(payload, out_dir=tmp_path / "again")
    assert any(w.startswith("self-training is not reproduced") for w in metrics["warnings"])


def test_a_resumed_study_keeps_its_self_training(kept_study, monkeypatch):
    result, url, tmp, _ = kept_study
    monkeypatch.setattr(tune_module, "train_ensemble", lambda *a, **k: pytest.fail("retrained a recorded model"))
    monkeypatch.setattr(st, "self_train", lambda *a, **k: pytest.fail("self-trained again"))
    again, _ = _run(tmp, "kept", result.settings, _pool())
    assert again.test_score == result.test_score and again.self_training == result.self_training
    assert any(n.startswith("self-training: kept") for n in again.notes)


def test_a_run_that_died_in_the_middle_of_self_training_is_redone(kept_study, monkeypatch):
    result, url, tmp, _ = kept_study
    study = load_study("kept", open_storage(url))
    # what a run killed during self-training leaves: the retrain not yet published with it
    study.set_user_attr(ATTR["final"], {})
    calls = []
    real = st.self_train

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "self_train", counting)
    monkeypatch.setattr(st, "keep_student", lambda student, teacher: True)
    again, _ = _run(tmp, "kept", result.settings, _pool())
    assert calls == [1] and again.self_training["kept"]
    final = load_study("kept", open_storage(url)).user_attrs[ATTR["final"]]
    assert final["self_training"] == {"unlabelled": result.settings.unlabelled, "threshold": THRESHOLD}


def test_self_training_never_replaces_a_better_teacher(tmp_path, monkeypatch):
    """An adversarial teacher: certain of a wrong label (the next class) on every unlabelled image.
    Its students learn those labels, lose on validation, and the teacher is handed back."""

    def adversarial(backbones, batches):
        from autotransfer.train import predict_proba

        _, proba = predict_proba([b.model for b in backbones], batches)
        wrong = (proba.argmax(1).cpu().numpy() + 1) % proba.shape[1]
        return np.eye(proba.shape[1], dtype=np.float32)[wrong]

    monkeypatch.setattr(st, "_teacher_probabilities", adversarial)
    result, url = _run(tmp_path, "adversarial", _settings(steps=36, eval_every=12), _pool())
    record = result.self_training
    assert not record["kept"] and record["kept_images"] == POOL
    assert record["student_val"] <= record["teacher_val"]
    assert "final" not in record and record["trainings"] == 2 * len(result.pick["members"])
    final = load_study("adversarial", open_storage(url)).user_attrs[ATTR["final"]]
    assert set(final["member_trained_on"]) == {"train+val"} and result.trained_on == "train+val"
    line = next(n for n in result.notes if n.startswith("self-training:"))
    assert line.startswith("self-training: not kept (student ") and "the teacher is handed back" in line
    config = json.loads((result.model_path / "config.json").read_text())
    assert (
        config["autotransfer"]["self_training"]["kept"] is False and config["autotransfer"]["trained_on"] == "train+val"
    )
    assert "Not kept:" in (result.model_path / "README.md").read_text()


def test_a_tie_keeps_the_teacher():
    assert st.keep_student(0.81, 0.80) and not st.keep_student(0.80, 0.80) and not st.keep_student(0.7, 0.8)
    assert not st.keep_student(None, 0.0)


def test_a_missing_or_empty_unlabelled_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--unlabelled") as missing:
        st.load_unlabelled(str(tmp_path / "nowhere"))
    assert "\n" not in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--unlabelled") as empty:
        st.load_unlabelled(str(tmp_path / "empty"))
    assert "\n" not in str(empty.value)


def test_an_unlabelled_folder_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    from autotransfer.pipeline.options import absolute_spec, tune_settings

    (tmp_path / "pool").mkdir()
    monkeypatch.chdir(tmp_path)
    absolute = str((tmp_path / "pool").resolve())
    assert (
        absolute_spec("pool") == absolute and absolute_spec("folder:pool?decode=64") == f"folder:{absolute}?decode=64"
    )
    assert absolute_spec("builtin:digits") == "builtin:digits" and absolute_spec("missing") == "missing"
    settings = tune_settings("builtin:digits", {"unlabelled": "pool", "device": "cpu"}, surface=None)
    assert settings.unlabelled == absolute and settings.pseudo_threshold == 0.9


@pytest.mark.parametrize("threshold", [0, 1, 1.2, -0.5])
def test_a_threshold_outside_the_open_unit_interval_is_refused(threshold):
    with pytest.raises(UserError, match="--pseudo-threshold"):
        _settings(pseudo_threshold=threshold)


def test_cli_bad_unlabelled_is_exit_2_one_line_before_any_work(tmp_path):
    from tests.test_cli import ENTRY, assert_one_line_error, run_cli

    if not ENTRY.exists():
        pytest.skip("the autotransfer console script is not installed")
    done = run_cli("tune", "builtin:digits", "--unlabelled", str(tmp_path / "missing"), "--out", "o", cwd=tmp_path)
    assert_one_line_error(done, "--unlabelled", "missing")
    assert not (tmp_path / "o" / "autotransfer.db").exists()  # refused before the study was made
    done = run_cli("tune", "builtin:digits", "--unlabelled", "x", "--pseudo-threshold", "1.5", cwd=tmp_path)
    assert_one_line_error(done, "--pseudo-threshold", "1.5")


def test_cli_self_trains_on_a_folder_and_shows_it(tmp_path):
    """``tune --unlabelled FOLDER``: the folder's images are offered, progress goes to stderr, the
    JSON result and its notes carry the outcome."""
    from PIL import Image

    from tests.test_cli import ENTRY, TINY_TUNE, run_cli

    if not ENTRY.exists():
        pytest.skip("the autotransfer console script is not installed")
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i, image in enumerate(np.asarray(_pool().images)[:40]):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    done = run_cli(
        *TINY_TUNE,
        "--unlabelled",
        str(folder),
        "--pseudo-threshold",
        "0.11",
        "--out",
        "o",
        "--format",
        "json",
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    record = result["self_training"]
    assert record["offered"] == 40 and record["threshold"] == 0.11 and record["unlabelled"] == str(folder.resolve())
    assert any(n.startswith("self-training: ") for n in result["notes"])
    assert "self-training: teacher 1 of 1" in done.stderr and "self-training: student 1 of 1" in done.stderr
