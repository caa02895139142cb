"""``autotransfer estimate``'s forecast: the table line, the JSON field, the job's options refused
as ``tune`` refuses them."""

from __future__ import annotations

import json

from tests.test_cli import assert_one_line_error, pytestmark, run_cli  # noqa: F401 (the skip mark)


def test_estimate_prints_the_forecast_line(tmp_path):
    done = run_cli("estimate", "builtin:digits", "--n", "100", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    text = " ".join(done.stdout.split())
    assert "forecast before any trial: accuracy" in text and "(80%:" in text
    assert "past studies (13 like this job, 3 targets" in text


def test_estimate_json_has_the_forecast_field(tmp_path):
    done = run_cli(
        "estimate",
        "builtin:digits",
        "--n",
        "100",
        "--resolution",
        "224",
        "--time-budget",
        "5m",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    forecast = json.loads(done.stdout)["forecast"]
    low, high = forecast["interval"]
    assert low < forecast["score"] < high and forecast["level"] == 0.8
    assert forecast["like"] == 0 and any("224 px" in n for n in forecast["notes"])
    assert any("300 s budget" in n for n in forecast["notes"])


def test_estimate_refuses_the_job_options_as_tune_does(tmp_path):
    done = run_cli("estimate", "builtin:digits", "--n", "100", "--time-budget", "soon", cwd=tmp_path)
    assert_one_line_error(done, "--time-budget", "'soon'")
    done = run_cli("estimate", "builtin:digits", "--n", "100", "--trials", "0", cwd=tmp_path)
    assert_one_line_error(done, "trials")
