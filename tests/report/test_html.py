"""The self-contained HTML report: every section, plotly inline once, no network reference to load."""

from __future__ import annotations

import re

import pytest
import yaml

from autotransfer.core.errors import UserError
from autotransfer.handback.export import export_payload
from autotransfer.report.html import report_html, write_report, write_study_report
from autotransfer.search.storage import open_storage
from autotransfer.search.study import load_study
from tests.report.conftest import synthetic_study


@pytest.fixture(scope="module")
def report(made_study, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "out" / "report.html"
    written = write_study_report(made_study.name, path, made_study.storage_url)
    return written, written.read_text(encoding="utf-8")


def test_report_is_self_contained(report):
    path, text = report
    assert path.exists() and text.startswith("<!DOCTYPE html>")
    # no script or stylesheet is fetched: no src/href pointing at a network address
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, flags=re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", text, flags=re.I)
    # plotly.js is embedded exactly once, and every figure uses it
    assert len(re.findall(r"\* plotly\.js v\d", text)) == 1
    assert text.count("Plotly.newPlot(") == text.count('class="plotly-graph-div"') == 7


def test_report_shows_every_section(report, made_study):
    _, text = report
    study = load_study(made_study.name, open_storage(made_study.storage_url, heartbeat=False))
    for heading in (
        "Task profile",
        "Prior against the found protocol",
        "Optimisation history",
        "Parameter importances",
        "Controls",
        "Held-out test score",
        "Exported config",
    ):
        assert f"<h2>{heading}</h2>" in text
    for title in (
        "excess divergence by depth",
        "prior against found protocol",
        "optimisation history",
        "parameter importances",
        "controls against the best protocol",
        "protocol against accuracy",
    ):
        assert title in text
    final = study.user_attrs["autotransfer.final"]
    assert f"<b>{final['test_score']:.4f}</b>" in text
    # the exported config is embedded as YAML that reads back to the export's protocol
    block = re.search(r"<pre>(.*?)</pre>", text, flags=re.S).group(1)
    import html

    exported = yaml.safe_load(html.unescape(block))
    assert exported["protocol"] == export_payload(study)["protocol"]
    assert exported["study"] == made_study.name


def test_report_without_enough_trials_says_why(tmp_path):
    from autotransfer.core.protocol import Protocol

    few = [(Protocol(log10_elr=-1.0), 0.3, {12: 0.3}, "prior")]
    text = report_html(synthetic_study(search=few))
    assert "No importances: needs at least 3 completed search trials, has 1." in text
    assert text.count("Plotly.newPlot(") >= 1 and len(re.findall(r"\* plotly\.js v\d", text)) == 1


def test_report_bad_output_and_unknown_study(made_study, tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        write_report(synthetic_study(), tmp_path)
    with pytest.raises(UserError, match="no study named 'nope'"):
        write_study_report("nope", tmp_path / "r.html", made_study.storage_url)
    with pytest.raises(UserError, match="does not exist"):
        write_study_report(made_study.name, tmp_path / "r.html", str(tmp_path / "missing.db"))
