"""Issue 31, storage: concurrent ``tune`` runs on one new study, every process that joins a study
drawing its own protocols, finding the study ``tune --out`` wrote, read-only commands that never
create a database, credentials masked wherever a storage URL is shown, and the dashboard's
warning when it listens beyond this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from autotransfer.core.errors import UserError
from autotransfer.core.schema import ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.search.storage import STORAGE_ENV, masked_url, open_storage
from autotransfer.search.study import load_study, read_space

REPO = Path(__file__).resolve().parents[1]

#: The tiniest study ``tune`` can open: 40 digits at 16 px, 4 steps.
TINY = dict(
    target="builtin:digits",
    model="fashion-source",
    n=40,
    seed=0,
    resolution=16,
    batch_size=16,
    steps=4,
    trials=2,
    device="cpu",
    prior="quadrant",
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "AUTOTRANSFER_CACHE": str(tmp_path / "cache"),
        "AUTOTRANSFER_SURFACE": "",
        "COLUMNS": "200",
    }


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autotransfer.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**_env(cwd), **(env or {})},
    )


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- two tune runs on one new study ---------------------------------------------------------------

_OPEN = textwrap.dedent(
    """
    import json, sys
    import autotransfer.pipeline.tune as tune
    from autotransfer.core.settings import StudySettings
    from autotransfer.search.study import search_trials

    # both runs checked before either created: the race, every time
    tune.study_exists = lambda storage, name: False
    notes = []

    class UI:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def note(self, line):
            notes.append(line)

    opened = tune.open_study_for(
        StudySettings(**json.loads(sys.argv[1])), study_name="race", storage=sys.argv[2], ui=UI(),
        estimator_kwargs={"max_source_images": 16},  # a quicker estimate: the race is in the creation
    )
    print(json.dumps({"notes": notes, "trials": len(opened.study.trials)}))
    """
)


def test_two_tune_runs_started_together_share_one_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN, json.dumps(TINY), url],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=180) for run in runs]
    for run, (_out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    notes = [" ".join(r["notes"]) for r in results]
    assert sum("created study 'race' in" in n for n in notes) == 1
    assert sum("joined study 'race'" in n for n in notes) == 1, notes  # the loser joined it as a worker
    study = load_study("race", open_storage(url, heartbeat=False))
    assert ATTR["settings"] in study.user_attrs and ATTR["space"] in study.user_attrs
    # the fixed protocols were enqueued once, by the run that created the study
    sources = [t.user_attrs["source"] for t in study.trials]
    assert sources and len(sources) == len(set(sources)) and "prior" in sources
    assert all(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    assert results[0]["trials"] == results[1]["trials"] == len(sources)


def _bare_study(url: str, name: str, *, creating: bool = True) -> optuna.Study:
    """A study as a ``tune`` that is still creating it leaves it: optuna's study, no settings yet."""
    study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat=False))
    if creating:
        study.set_user_attr(
            ATTR.get("creating", "autotransfer.creating"), {"by": "elsewhere:1", "at": "2026-12-01T00:00:00"}
        )
    return study


def test_a_reader_waits_for_the_settings_of_a_study_being_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'wait.db'}"
    study = _bare_study(url, "half")
    settings = StudySettings(**TINY)

    def finish() -> None:
        time.sleep(0.5)
        study.set_user_attr(ATTR["settings"], settings.to_dict())

    writer = threading.Thread(target=finish)
    writer.start()
    try:
        loaded = load_study("half", open_storage(url, heartbeat=False), wait=60)
    finally:
        writer.join()
    assert loaded.user_attrs[ATTR["settings"]]["target"] == "builtin:digits"


def test_a_study_left_half_created_is_one_line_naming_the_storage(tmp_path):
    db = tmp_path / "half.db"
    _bare_study(f"sqlite:///{db}", "half")
    with pytest.raises(UserError) as err:
        load_study("half", open_storage(f"sqlite:///{db}", heartbeat=False), wait=0)
    line = str(err.value)
    assert "\n" not in line and str(db) in line and "never written" in line and "elsewhere:1" in line


def test_every_tune_that_opens_an_existing_study_draws_its_own_protocols(tmp_path):
    from autotransfer.pipeline.tune import open_study_for

    url = f"sqlite:///{tmp_path / 'resume.db'}"
    settings = StudySettings(**{**TINY, "prior": "none"})
    first = open_study_for(settings, study_name="again", storage=url)
    while first.study.get_trials(states=(optuna.trial.TrialState.WAITING,)):
        first.study.tell(first.study.ask(), 0.5)  # the enqueued controls, done
    draws = []
    for _ in range(2):  # two runs resuming the study, as `tune --trials 8` twice
        opened = open_study_for(settings, study_name="again", storage=url)
        trial = opened.study.ask()
        draws.append(read_space(opened.study).suggest(trial).to_dict())
    assert draws[0] != draws[1]


# -- finding the study tune --out wrote; read-only commands create nothing ---------------------------


def test_storage_of_an_out_folder_or_a_run_folder(tmp_path, monkeypatch):
    from autotransfer.search.storage import study_storage

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    out = tmp_path / "j"
    (out / "runs" / "j1").mkdir(parents=True)
    (out / "autotransfer.db").touch()
    expected = f"sqlite:///{out / 'autotransfer.db'}"
    assert study_storage(out=out) == expected
    assert study_storage(out=out / "runs" / "j1") == expected  # the model folder tune wrote
    assert study_storage(storage=str(out)) == expected  # --storage given the folder
    assert study_storage(storage="sqlite:///x.db", out=out) == "sqlite:///x.db"  # --storage wins


def test_export_and_report_find_the_study_in_tune_out_and_name_the_storage(tmp_path):
    out = tmp_path / "j"
    db = out / "autotransfer.db"
    out.mkdir()
    optuna.create_study(study_name="j1", storage=f"sqlite:///{db}")  # found: then refused as not autotransfer's
    (out / "runs" / "j1").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (
        ["export", "j1", "--out", str(out)],
        ["report", "j1", "--out", str(out / "runs" / "j1"), "-o", "r.html"],
    ):
        line = _one_line_error(_cli(*args, cwd=elsewhere), "'j1'", str(db))
        assert "no study named" not in line and "not made by autotransfer" in line
    line = _one_line_error(_cli("export", "j2", "--out", str(out), cwd=elsewhere), "no study named 'j2'", str(db))
    assert "j1" in line  # the known studies
    assert not (elsewhere / "studies").exists()


@pytest.mark.parametrize(
    "command", [["export", "j1"], ["report", "j1", "-o", "r.html"], ["worker", "--study", "j1", "--quiet"]]
)
def test_a_read_only_command_never_creates_a_database(tmp_path, command):
    line = _one_line_error(
        _cli(*command, cwd=tmp_path), "does not exist", str(tmp_path / "studies" / "autotransfer.db")
    )
    assert "--out" in line
    assert not (tmp_path / "studies").exists()


# -- credentials masked ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, secret",
    [
        ("postgresql://u@db.lan/at?password=s3cret", "s3cret"),
        ("postgresql://u:s3cret@db.lan/at", "s3cret"),
        ("postgresql://u@db.lan/at?sslmode=require&sslpassword=s3cret", "s3cret"),
        ("postgresql://u@db.lan/at?passfile=/home/u/.s3cret", "s3cret"),
        ("postgresql://u@db.lan/at?application_name=x&access_token=s3cret", "s3cret"),
        ("mysql+pymysql://u@db.lan/at?PASSWORD=s3cret", "s3cret"),
    ],
)
def test_every_credential_in_a_url_is_masked(url, secret):
    shown = masked_url(url)
    assert secret not in shown and "***" in shown and "db.lan" in shown


def test_storage_errors_never_show_a_query_password():
    url = "postgresql://u@127.0.0.1:9/at?password=s3cret&connect_timeout=1"
    with pytest.raises(UserError) as err:
        open_storage(url, heartbeat=False)
    assert "s3cret" not in str(err.value) and "127.0.0.1:9" in str(err.value)
    with pytest.raises(UserError) as err:  # a URL SQLAlchemy cannot parse: its own message quotes it
        open_storage("postgresql://u:s3cret@[bad/at?password=s3cret", heartbeat=False)
    assert "s3cret" not in str(err.value)


def test_local_workers_get_the_storage_through_their_environment(tmp_path, monkeypatch):
    from autotransfer.search import workers

    url = f"sqlite:///{tmp_path / 's.db'}?password=s3cret"
    seen = []

    class FakePopen:
        def __init__(self, command, env, **_):
            seen.append((command, env))

    monkeypatch.setenv(STORAGE_ENV, "sqlite:///somewhere-else.db")
    monkeypatch.setattr(workers.subprocess, "Popen", FakePopen)
    workers.launch_local_workers("s", url, 2, device="cpu")
    assert len(seen) == 2
    for command, env in seen:
        assert not any("s3cret" in part for part in command) and "--storage" not in command  # `ps` shows it
        assert env[STORAGE_ENV] == url  # readable by this user only (/proc/PID/environ)


# -- the dashboard beyond this machine --------------------------------------------------------------


def test_dashboard_on_every_interface_warns(tmp_path, monkeypatch):
    import optuna_dashboard

    from autotransfer.report.dashboard import exposure_warning, run_dashboard

    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert exposure_warning("::1") is None
    line = exposure_warning("0.0.0.0")
    assert line is not None and "every interface" in line and "unauthenticated" in line
    url = f"sqlite:///{tmp_path / 'd.db'}"
    optuna.create_study(study_name="x", storage=url)
    served, warned = [], []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda store, host, port: served.append(host))
    run_dashboard(url, host="0.0.0.0", port=_free_port(), warn=warned.append)
    assert served == ["0.0.0.0"] and len(warned) == 1 and "0.0.0.0" in warned[0]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
