"""Attaching autotransfer's views to studies (fixed ids, idempotent) and the dashboard's bad-input errors."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import optuna
import pytest
from optuna_dashboard import get_note
from optuna_dashboard._custom_plot_data import SYSTEM_ATTR_PLOT_DATA, get_plotly_graph_objects

from autotransfer.core.errors import UserError
from autotransfer.report.dashboard import (
    VIEW_IDS,
    attach_views,
    check_port,
    open_dashboard_storage,
    run_dashboard,
    study_note,
)
from autotransfer.search.storage import open_storage


@pytest.fixture
def storage_copy(made_study, tmp_path) -> str:
    """A copy of the shared study's database, so attaching views does not change the original."""
    path = tmp_path / "copy.db"
    shutil.copy(made_study.workdir / "studies.db", path)
    return f"sqlite:///{path}"


def _system_attrs(url: str, name: str) -> dict:
    store = open_storage(url, heartbeat=False)
    study = optuna.load_study(study_name=name, storage=store)
    return store.get_study_system_attrs(study._study_id)


def test_attach_twice_leaves_one_figure_per_fixed_id(made_study, storage_copy):
    # a study autotransfer did not make is left alone
    optuna.create_study(study_name="someone-else", storage=open_storage(storage_copy, heartbeat=False))
    first = attach_views(storage_copy)
    assert list(first) == [made_study.name]
    ids = first[made_study.name]
    assert set(ids) == {VIEW_IDS[k] for k in ("divergence", "protocol", "controls", "prior")}
    attrs = _system_attrs(storage_copy, made_study.name)
    graphs = get_plotly_graph_objects(attrs)
    assert sorted(graphs) == sorted(ids)
    plot_keys = sorted(k for k in attrs if k.startswith(SYSTEM_ATTR_PLOT_DATA))
    note_version = attrs["dashboard:note_ver"]

    again = attach_views(storage_copy, made_study.name)
    attrs = _system_attrs(storage_copy, made_study.name)
    assert again == first
    assert sorted(get_plotly_graph_objects(attrs)) == sorted(ids)  # replaced, not duplicated
    assert sorted(k for k in attrs if k.startswith(SYSTEM_ATTR_PLOT_DATA)) == plot_keys
    assert attrs["dashboard:note_ver"] == note_version  # an unchanged note is not saved again
    # the figure stored under a fixed id is the autotransfer figure with its title
    assert "excess divergence by depth" in graphs[VIEW_IDS["divergence"]]
    other = optuna.load_study(study_name="someone-else", storage=open_storage(storage_copy, heartbeat=False))
    assert open_storage(storage_copy, heartbeat=False).get_study_system_attrs(other._study_id) == {}


def test_note_holds_the_profile_and_the_prior(made_study, storage_copy):
    attach_views(storage_copy, made_study.name)
    study = optuna.load_study(study_name=made_study.name, storage=open_storage(storage_copy, heartbeat=False))
    note = get_note(study)
    assert note == study_note(study)
    assert "### Task profile" in note and "| similarity (0-1) |" in note
    assert "### Divergence by depth (bn-w2)" in note
    assert "### Prior (quadrant," in note and "| log10_elr |" in note and "Why this prior:" in note


def test_missing_storage_file_is_one_line(tmp_path):
    missing = tmp_path / "nowhere" / "studies.db"
    with pytest.raises(UserError, match="does not exist") as err:
        open_dashboard_storage(f"sqlite:///{missing}")
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert not missing.parent.exists()  # nothing created on the way
    with pytest.raises(UserError, match="does not exist"):
        attach_views(str(tmp_path / "studies.log"))


def test_a_file_that_is_not_a_storage_is_one_line(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("this is not a database\n")
    with pytest.raises(UserError, match="not an SQLite database") as err:
        run_dashboard(f"sqlite:///{bad}", port=_free_port())
    assert "\n" not in str(err.value)


def test_unknown_study_is_one_line_naming_it(made_study, storage_copy):
    with pytest.raises(UserError, match="no study named 'no-such-study'") as err:
        run_dashboard(storage_copy, study_name="no-such-study", port=_free_port())
    assert made_study.name in str(err.value)  # the known studies are listed
    with pytest.raises(UserError, match="no-such-study"):
        attach_views(storage_copy, "no-such-study")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_port_in_use_is_one_line(storage_copy):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port("127.0.0.1", port)
        with pytest.raises(UserError, match="already in use"):
            run_dashboard(storage_copy, port=port)  # refused before anything is served
    check_port("127.0.0.1", port)  # free again
    for bad in (0, 70000, "8080"):
        with pytest.raises(UserError, match="--port must be an integer in 1..65535"):
            check_port("127.0.0.1", bad)


def test_cli_dashboard_bad_input_exits_2_with_one_line(made_study, storage_copy, tmp_path):
    cases = [
        ["--storage", f"sqlite:///{tmp_path / 'missing.db'}"],
        ["--storage", storage_copy, "--study", "no-such-study"],
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append(["--storage", storage_copy, "--port", str(busy.getsockname()[1])])
        for args in cases:
            done = subprocess.run(
                [sys.executable, "-m", "autotransfer.cli", "dashboard", *args],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
