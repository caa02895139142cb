"""The real ``autotransfer`` entry point under bad input: one line on stderr, exit 2, no traceback;
nothing written outside its folder; no secret printed; a useless model said to be useless."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ENTRY = Path(sys.executable).with_name("autotransfer")
pytestmark = pytest.mark.skipif(not ENTRY.exists(), reason="the autotransfer console script is not installed")


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "AUTOTRANSFER_CACHE": str(cwd / "cache"),
        "AUTOTRANSFER_SURFACE": str(cwd / "surface.json"),
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [str(ENTRY), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    # a training's plain progress lines (stderr not a terminal: issue 31) may come before the error
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("  training: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- usage errors: typer's standalone mode -------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["tune", "--bogus"], "No such option: --bogus"),
        (["export"], "Missing argument"),
        (["tune", "--trials", "x"], "Invalid value for '--trials'"),
        (["estimate", "builtin:digits", "--format", "xml"], "Invalid value for '--format'"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(tmp_path, args, needle):
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert needle in done.stderr
    assert "Try 'autotransfer" in done.stderr  # and says where the help is


def test_bare_command_shows_help_and_exits_2(tmp_path):
    done = run_cli(cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "tune" in done.stdout + done.stderr and "Usage" in done.stdout + done.stderr


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", "/tmp/abs", "..", "tab\tname"])
def test_study_name_cannot_lead_out_of_studies(tmp_path, name):
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    done = run_cli("tune", "builtin:digits", "--study", name, "--trials", "1", cwd=work)
    assert_one_line_error(done, "study name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]  # nothing written beside
    assert not (work / "studies").exists()  # refused before any work


# -- storage -------------------------------------------------------------------------------------


def _make_read_only(path: Path) -> None:
    """A read-only file even for root: ``chattr +i`` when running as root (needs
    CAP_LINUX_IMMUTABLE), else mode 0444."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a file read-only")


def test_read_only_sqlite_study_file_is_one_line(tmp_path):
    import optuna

    db = tmp_path / "studies.db"
    optuna.create_study(study_name="kept", storage=f"sqlite:///{db}")
    _make_read_only(db)
    try:
        done = run_cli(
            "tune",
            "builtin:digits",
            "--model",
            "fashion-source",
            "--n",
            "100",
            "--trials",
            "1",
            "--storage",
            str(db),
            "--study",
            "kept",
            cwd=tmp_path,
            timeout=120,
        )
        assert_one_line_error(done, "read-only", str(db))
        # reading it is fine: export reaches the study (and says it is not autotransfer's)
        done = run_cli("export", "kept", "--storage", str(db), cwd=tmp_path, timeout=120)
        line = assert_one_line_error(done, "kept")
        assert "read-only" not in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)])
        db.chmod(0o644)


# -- what loading skipped reaches estimate -------------------------------------------------------


def test_estimate_shows_skipped_files_in_table_and_json(tmp_path):
    root = tmp_path / "data"
    for label, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixel = np.array([label * 120, i * 20, 80], dtype=np.uint8)
            Image.fromarray(np.broadcast_to(pixel, (16, 16, 3)).copy()).save(root / name / f"{i}.png")
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "text.png").write_text("not an image")
    (root / "b" / "cut.png").write_bytes((root / "b" / "0.png").read_bytes()[:30])
    os.symlink("..", root / "a" / "up")

    done = run_cli("estimate", f"folder:{root}", "--model", "fashion-source", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    profile = json.loads(done.stdout)
    assert profile["size"]["images"] == 12
    assert profile["skipped"]["count"] == 4
    assert profile["skipped"]["reasons"] == {"link-loop": 1, "unreadable": 3}
    assert set(profile["skipped"]["first"]) == {"a/up", "a/empty.png", "a/text.png", "b/cut.png"}
    assert any(n.startswith("skipped 4 file(s)") for n in profile["notes"])

    done = run_cli("estimate", f"folder:{root}", "--model", "fashion-source", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    table = " ".join(done.stdout.split())
    assert "skipped 4 file(s)" in table and "a/empty.png" in table and "a/up" in table


# -- train --config ------------------------------------------------------------------------------


def _export(tmp_path: Path, name: str, *, drop: str | None = None, **protocol) -> Path:
    """A protocol export as `autotransfer export` writes it, for the tiny digits task."""
    from tests.search.conftest import tiny

    settings = replace(tiny(), eval_every=12, metric="accuracy", num_classes=10)
    payload = {
        "schema": "autotransfer/protocol-export/v1",
        "study": "hand-made",
        "protocol": {"log10_elr": -1.5, "momentum": 0.9, "freeze_frac": 0.0, **protocol},
        "settings": settings.to_dict(),
        "scores": {"val": 0.5, "test": 0.5},
        "controls": {"scratch": 0.3, "probe": 0.4},
    }
    if drop:
        del payload[drop]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "name, change, needles",
    [
        ("no-settings", {"drop": "settings"}, ("'settings'",)),
        ("no-protocol", {"drop": "protocol"}, ("'protocol'",)),
        ("overflow", {"log10_elr": 400}, ("log10_elr", "400")),
        ("diverges", {"log10_elr": 30}, ("diverged", "log10_elr")),
        # the knob's own line (core.knobs), as Protocol and TrainConfig give it
        ("bad-bn-mode", {"bn_mode": "sometimes"}, ("bn_mode must be one of ['adapt', 'frozen'], but got 'sometimes'",)),
        ("bad-stage-frac", {"stage_frac": 1.0}, ("stage_frac must be in [0, 1), but got 1.0",)),
    ],
)
def test_train_config_faults_are_one_line(tmp_path, name, change, needles):
    config = _export(tmp_path, name, **change)
    done = run_cli("train", "--config", str(config), "-o", str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path)
    assert_one_line_error(done, *needles)
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "name, content",
    [
        ("binary.yaml", bytes(range(256)) * 4),  # a binary file (its 0x80 is no UTF-8 start byte)
        ("latin-1.yaml", "schema: autotransfer/protocol-export/v1\nstudy: café\n".encode("latin-1")),
    ],
)
def test_train_config_that_is_not_utf8_text_is_one_line(tmp_path, name, content):
    config = tmp_path / name
    config.write_bytes(content)
    done = run_cli("train", "--config", str(config), "-o", str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path)
    assert_one_line_error(done, f"config {str(config)!r}", "UTF-8", "autotransfer export")
    assert not (tmp_path / "out").exists()


def test_train_config_at_chance_says_so_loudly(tmp_path):
    config = _export(tmp_path, "chance", log10_elr=2)  # (3 diverges here, in 12 steps at 16 px)
    out = tmp_path / "out"
    done = run_cli("train", "--config", str(config), "-o", str(out), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["at_chance"] is True
    assert 0.0 < metrics["chance_level"] < 0.2  # 10 classes
    assert metrics["below_probe"] is True  # the export's probe scored 0.4
    assert any("chance level" in w for w in metrics["warnings"])
    err = " ".join(done.stderr.split())
    assert "WARNING: the model is at chance level" in err
    assert "below the study's linear-probe control" in err


# -- secrets -------------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("AUTOTRANSFER_TEST_POSTGRES_URL") or (
    "postgresql://autotransfer:autotransfer@127.0.0.1:5432/autotransfer_test"
)


@pytest.mark.postgres
def test_postgres_password_is_never_printed(tmp_path):
    import uuid

    from sqlalchemy.engine import make_url

    from autotransfer.core.errors import UserError
    from autotransfer.search.storage import masked_url, open_storage

    try:
        open_storage(POSTGRES_URL, heartbeat=False).get_all_studies()
    except UserError as err:
        if os.environ.get("CI"):
            pytest.fail(f"no PostgreSQL server ({err}): run `bash .ci/postgres`")
        pytest.skip(f"no PostgreSQL server ({err}): run `bash .ci/postgres`")
    url = make_url(POSTGRES_URL)
    secret = f":{url.password}@"
    assert secret not in masked_url(POSTGRES_URL) and ":***@" in masked_url(POSTGRES_URL)
    study = f"mask-{uuid.uuid4().hex[:8]}"
    common = (
        "builtin:digits",
        "--model",
        "fashion-source",
        "--n",
        "160",
        "--resolution",
        "16",
        "--batch-size",
        "16",
        "--steps",
        "12",
        "--trials",
        "1",
        "--device",
        "cpu",
        "--prior",
        "quadrant",
        "--storage",
        POSTGRES_URL,
        "--study",
        study,
    )
    done = run_cli("tune", *common, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"created study {study!r} in {masked_url(POSTGRES_URL)}" in " ".join(
        done.stderr.split() + done.stdout.split()
    )
    assert secret not in done.stdout and secret not in done.stderr
    done = run_cli("tune", *common, "--format", "json", cwd=tmp_path, timeout=600)  # resumes: nothing left to run
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["storage"] == masked_url(POSTGRES_URL)
    assert secret not in done.stdout and secret not in done.stderr


@pytest.mark.parametrize(
    "args, needles",
    [
        (["tune", "builtin:digits", "--steps", "-5"], ("--steps must be >= 1", "-5")),
        (["tune", "builtin:digits", "--steps", "0"], ("--steps must be >= 1", "leave it out")),
        (
            ["tune", "builtin:digits", "--prior", "quadrnt"],
            ("--prior must be quadrant, none or surface:PATH", "quadrnt"),
        ),
        (["tune", "builtin:digits", "--pick", "best"], ("--pick must be one of ensemble, cv, val", "best")),
        (["tune", "builtin:digits", "--schedules", "one-stage,lpft"], ("--schedules", "lp-ft", "'lpft'")),
        (["tune", "builtin:digits", "--pseudo-threshold", "1.5"], ("--pseudo-threshold must lie in (0, 1)", "1.5")),
        (["tune", "builtin:digits", "--timeout", "-1"], ("--timeout must be > 0", "-1.0")),
        (["tune", "builtin:digits", "--timeout", "0"], ("--timeout must be > 0", "0.0", "leave it out")),
        (["worker", "--study", "s", "--timeout", "0"], ("--timeout must be > 0", "0.0")),
    ],
)
def test_bad_tune_values_are_one_line_before_any_work(tmp_path, args, needles):
    assert_one_line_error(run_cli(*args, cwd=tmp_path), *needles)
    assert not (tmp_path / "studies").exists()


# -- tune --out, AUTOTRANSFER_STORAGE, progress, exports -------------------------------------------

TINY_TUNE = (
    "tune",
    "builtin:digits",
    "--model",
    "fashion-source",
    "--n",
    "160",
    "--resolution",
    "16",
    "--batch-size",
    "16",
    "--steps",
    "12",
    "--trials",
    "1",
    "--pick",
    "val",
    "--device",
    "cpu",
    "--prior",
    "quadrant",
)


@pytest.fixture(scope="module")
def tuned_out(tmp_path_factory):
    """``(work folder, tune's JSON, its stderr)`` of a tiny study tuned with ``--out out``, as a terminal
    would show it (FORCE_COLOR: rich draws its bars), no surface shared through the environment."""
    work = tmp_path_factory.mktemp("tune-out")
    done = run_cli(
        *TINY_TUNE, "--out", "out", "--format", "json", cwd=work, env={"AUTOTRANSFER_SURFACE": "", "FORCE_COLOR": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return work, json.loads(done.stdout), done.stderr


def test_tune_out_puts_every_artifact_in_one_folder_and_says_where_absolutely(tuned_out):
    work, result, _ = tuned_out
    out = (work / "out").resolve()
    assert (
        result["model"] == str(out / "runs" / result["study"])
        and (out / "runs" / result["study"] / "config.json").is_file()
    )
    assert result["export"] == str(out / "exports" / f"{result['study']}.yaml") and Path(result["export"]).is_file()
    assert result["storage"] == f"sqlite:///{out / 'autotransfer.db'}" and (out / "autotransfer.db").is_file()
    assert result["surface"] == {"path": str(out / "surface.json"), "recorded": False}  # 1 trial: too thin to record
    assert sorted(p.name for p in work.iterdir()) == ["cache", "out"]  # nothing beside it (cache: AUTOTRANSFER_CACHE)


def test_tune_shows_estimate_and_retrain_progress_on_stderr(tuned_out):
    _, _, stderr = tuned_out
    assert "target features" in stderr  # the estimator's bar
    assert "retraining trial" in stderr and "12/12" in stderr and "steps" in stderr  # the final retrain's bar


def test_autotransfer_storage_is_the_default_of_every_command(tuned_out, tmp_path):
    work, result, _ = tuned_out
    env = {"AUTOTRANSFER_STORAGE": f"sqlite:///{work / 'out' / 'autotransfer.db'}", "AUTOTRANSFER_SURFACE": ""}
    done = run_cli("export", result["study"], "--format", "timm", "-o", "args.yaml", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    from autotransfer.handback.export import TIMM_TRAIN_KEYS

    args = yaml.safe_load((tmp_path / "args.yaml").read_text())
    assert set(args) <= TIMM_TRAIN_KEYS and args["opt"] == "momentum" and args["warmup_epochs"] == 0
    assert Path(args["initial_checkpoint"]) == tmp_path / "args-init.safetensors"
    err = " ".join(done.stderr.split())
    assert "wrote args.yaml and args-init.safetensors" in err
    from autotransfer.handback.export import export_payload, not_expressed
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import load_study

    study = load_study(result["study"], open_storage(env["AUTOTRANSFER_STORAGE"], heartbeat=False))
    missing = not_expressed(export_payload(study), "timm")  # the study's protocol: what timm lacks for it
    assert ("timm's train.py cannot express" in err) == bool(missing)  # said exactly when something is lost
    assert all(" ".join(line.split()) in err for line in missing)
    done = run_cli("export", result["study"], "--format", "script", "-o", "train_it.py", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run: python train_it.py DATA_DIR --out MODEL_DIR" in " ".join(done.stderr.split())
    compile((tmp_path / "train_it.py").read_text(), "train_it.py", "exec")
    # tune too: it resumes the study there (its trials are done) instead of starting one under studies/
    done = run_cli(*TINY_TUNE, "--format", "json", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads(done.stdout)
    assert again["storage"] == env["AUTOTRANSFER_STORAGE"] and again["best_trial"] == result["best_trial"]
    assert "resuming study" in done.stderr and not (tmp_path / "studies" / "autotransfer.db").exists()


@pytest.mark.parametrize("command", [["export", "some-study"], ["report", "some-study", "-o", "r.html"]])
def test_a_secret_in_autotransfer_storage_stays_masked(tmp_path, command):
    env = {"AUTOTRANSFER_STORAGE": "postgresql://at:hunter2@127.0.0.1:9/autotransfer"}
    done = run_cli(*command, cwd=tmp_path, env=env, timeout=120)
    line = assert_one_line_error(done, "postgresql://at:***@127.0.0.1:9/autotransfer")
    assert "hunter2" not in done.stdout + done.stderr and "hunter2" not in line


@pytest.mark.parametrize(
    "args, needles",
    [
        (["export", "s", "--format", "timm"], ("--format timm writes a weights file", "-o")),
        (["export", "s", "--format", "script"], ("--format script writes a weights file", "-o")),
        (["export", "s", "--format", "xml"], ("--format must be one of yaml, json, timm, script", "xml")),
    ],
)
def test_bad_export_requests_are_one_line(tmp_path, args, needles):
    assert_one_line_error(run_cli(*args, cwd=tmp_path), *needles)
    assert not (tmp_path / "studies").exists()


def test_tune_that_hands_back_nothing_exits_1_with_one_line(tmp_path):
    """A ``--timeout`` that runs out before any transfer trial completes (one from-scratch control
    at most) hands back no model: that is not a success (issue 31 C). Without a prior the controls
    run first (with one, the prior's centre does: issue 27)."""
    done = run_cli(*TINY_TUNE, "--prior", "none", "--timeout", "0.01", "--format", "json", cwd=tmp_path)
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: nothing handed back: no transfer trial completed"), done.stderr[-3000:]
    assert "--timeout 0.01 s ran out" in last
    payload = json.loads(done.stdout)  # the summary still comes, for scripts
    assert payload["model"] is None and payload["export"] is None and payload["best_trial"] is None
    assert not list((tmp_path / "studies").glob("runs/*/model.safetensors"))


def test_tune_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    assert_one_line_error(run_cli(*TINY_TUNE, "--out", "taken", cwd=tmp_path), "--out 'taken' is a file")
