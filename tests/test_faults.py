"""Unit-level guards from the faults issue: study names as file names, the skipped-files record in a
task profile and tune's summary, masked storage URLs, the chance-level check."""

from __future__ import annotations

import dataclasses
import json

import pytest
from rich.console import Console

from autotransfer.core.errors import UserError
from autotransfer.core.paths import safe_name
from autotransfer.estimate.profile import TaskProfile
from autotransfer.pipeline.reproduce import chance_level, quality_warnings
from autotransfer.search.storage import masked_url
from tests.estimate.test_profile import _profile


@pytest.mark.parametrize("name", ["digits-fashion-source-n160-s0", "élan", "a..b", "x=1_y.2", "._data-m-all-s0"])
def test_safe_names_pass_unchanged(name):
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "name, why",
    [
        ("../../x", "separator"),
        ("..", "relative"),
        (".", "relative"),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("a\x00b", "control"),
        ("new\nline", "control"),
        ("x" * 201, "longer"),
        ("", "non-empty"),
    ],
)
def test_unsafe_names_are_refused_in_one_line(name, why):
    with pytest.raises(UserError) as err:
        safe_name(name)
    assert why in str(err.value) and "\n" not in str(err.value)


def test_skipped_record_survives_the_profile_and_reaches_the_summary():
    skipped = {
        "count": 6,
        "first": ["a/empty.png", "a/text.png", "a/up", "b/x.png", "b/y.png"],
        "reasons": {"unreadable": 5, "link-loop": 1},
    }
    profile = dataclasses.replace(_profile(), skipped=skipped)
    back = TaskProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert back.skipped == skipped
    assert TaskProfile.from_dict(_profile().to_dict()).skipped is None  # older profiles: none recorded

    from autotransfer.core.settings import StudySettings
    from autotransfer.pipeline.outcome import TuneResult
    from autotransfer.report.summary import summary_table

    fields = {f.name for f in dataclasses.fields(TuneResult)}
    values = dict(
        study_name="s",
        storage="postgresql://user:hunter2@db.lan:5432/at",
        settings=StudySettings(),
        best_protocol=None,
        best_trial=None,
        val_score=None,
        test_score=None,
        controls={},
        negative_transfer=False,
        export_path=None,
        model_path=None,
        n_search_trials=0,
        profile=back.to_dict(),
        prior=None,
    )
    result = TuneResult(**{k: v for k, v in values.items() if k in fields})
    console = Console(width=200, record=True)
    console.print(summary_table(result))
    text = console.export_text()
    assert "skipped files" in text and "6 (a/empty.png, a/text.png, a/up, ...)" in text
    assert "hunter2" not in text and "postgresql://user:***@db.lan:5432/at" in text


def test_masked_url_hides_only_the_password():
    assert masked_url("postgresql://at:secret@db.lan/autotransfer") == "postgresql://at:***@db.lan/autotransfer"
    assert masked_url("sqlite:///studies/autotransfer.db") == "sqlite:///studies/autotransfer.db"
    assert masked_url("studies/journal.log") == "studies/journal.log"


def test_chance_level_and_quality_warnings():
    import numpy as np

    labels = np.array([0] * 6 + [1] * 2 + [2] * 2)
    assert chance_level(labels, 3, "accuracy") == pytest.approx(0.6)  # always the largest class
    assert chance_level(labels, 3, "balanced_accuracy") == pytest.approx(1 / 3)
    at_chance, below, warnings = quality_warnings(0.12, 200, chance=0.1, probe=None)
    assert at_chance and below is None and "chance level" in warnings[0]
    at_chance, below, warnings = quality_warnings(0.9, 200, chance=0.1, probe=0.5)
    assert not at_chance and below is False and warnings == []
    at_chance, below, warnings = quality_warnings(0.5, 200, chance=0.1, probe=0.8)
    assert not at_chance and below is True and "linear-probe" in warnings[0]


def test_the_library_validates_the_prior_and_the_budget():
    import pytest

    from autotransfer.core.errors import UserError
    from autotransfer.core.settings import StudySettings

    with pytest.raises(UserError, match="--prior must be quadrant, none or surface:PATH, but got 'quadrnt'"):
        StudySettings(prior="quadrnt")
    with pytest.raises(UserError, match="surface:PATH"):
        StudySettings(prior="surface:")
    with pytest.raises(UserError, match="--steps must be >= 1"):
        StudySettings(steps=0)
    assert StudySettings(prior="surface:studies/surface.json").prior.endswith(".json")


def test_a_config_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    """An unreadable config (``chmod 000``; root reads everything, so the read is made to fail) is a
    ``UserError`` naming the file, like one that is not UTF-8 (tests/test_cli.py)."""
    from pathlib import Path

    from autotransfer.handback.export import read_export

    config = tmp_path / "locked.yaml"
    config.write_text("schema: x\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(UserError) as err:
        read_export(config)
    assert f"config {str(config)!r}" in str(err.value) and "Permission denied" in str(err.value)


@pytest.mark.parametrize("source", [None, "control:scratch#0", "prior:centre", "survey:recommended"])
def test_trial_labels_survive_rich_markup(source):
    """The running trial's label (``[tpe]``, ``[control:…]``, ``[prior:…]``) reaches the bar and the
    plain note as written: rich read it as a markup tag and dropped it (issue 31 D)."""
    import io
    from types import SimpleNamespace

    from autotransfer.core.protocol import Protocol
    from autotransfer.search.progress import RichUI

    trial = SimpleNamespace(number=3, user_attrs={"source": source} if source else {})
    label = f"[{source or 'tpe'}]"
    for in_search in (True, False):
        console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
        ui = RichUI(console=console)
        if in_search:
            ui.search_start(total=2, done=0)
        ui.trial_start(trial, Protocol())
        ui.close()
        shown = console.export_text()
        assert f"trial 3 {label} elr=" in shown, shown
