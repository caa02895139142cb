"""A trial that dies (SIGKILL, OOM kill, Ctrl-C) is re-run once with its parameters, whether it was
sampled or enqueued (controls included), even when an enqueued value lies outside the study's
range; no worker crashes because of it (issue 16, §1). The PostgreSQL case is in test_postgres.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotransfer.core.protocol import ParamRange, ProtocolSpace
from autotransfer.core.schema import CONTROL_ATTR, SOURCE_ATTR, WORKER_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.prior import recommended_protocol, scratch_protocols
from autotransfer.search import storage as storage_module
from autotransfer.search.retry import INTERRUPTED_REASON, retried_trial_number
from autotransfer.search.sampler import is_sampled
from autotransfer.search.storage import open_storage
from autotransfer.search.study import create_study, load_study, search_trials
from autotransfer.search.workers import run_worker
from tests.search.conftest import prepared_tiny

ENTRY = Path(sys.executable).with_name("autotransfer")


def narrow_space() -> ProtocolSpace:
    """A space like a surface prior's centred one: ``freeze_frac`` in [0.68, 1] and ``momentum`` in
    [0.93, 0.95], so the survey's protocol (0.0, 0.9) and the controls lie outside it."""
    ranges = dict(ProtocolSpace().ranges)
    ranges["freeze_frac"] = ParamRange(0.68, 1.0)
    ranges["momentum"] = ParamRange(0.93, 0.95)
    return ProtocolSpace(ranges=ranges)


SCRATCH = (scratch_protocols()[0], {CONTROL_ATTR: "scratch", SOURCE_ATTR: "control:scratch#0"})
RECOMMENDED = (recommended_protocol(), {SOURCE_ATTR: "survey:recommended"})


def queued_params(trial) -> dict:
    """What a trial runs with: its parameters, or (WAITING, enqueued) the fixed values it was queued with."""
    return trial.params or trial.system_attrs.get("fixed_params", {})


def make_narrow_study(name: str, url: str, settings: StudySettings, enqueue) -> optuna.Study:
    settings, _ = prepared_tiny(settings)
    return create_study(
        name,
        open_storage(url, heartbeat=False),
        settings,
        profile=None,
        prior=None,
        space=narrow_space(),
        enqueue=enqueue,
    )


def leave_dead(url: str, name: str) -> optuna.trial.Trial:
    """What a SIGKILLed worker leaves: the next queued trial RUNNING with its parameters, and a
    last heartbeat that is already stale."""
    beating = open_storage(url)
    study = optuna.load_study(study_name=name, storage=beating)
    with pytest.warns(UserWarning):  # heartbeat, and the out-of-range fixed parameter
        trial = study.ask()
        narrow_space().suggest(trial)
    trial.set_user_attr(WORKER_ATTR, "elsewhere:1")
    trial.set_user_attr("oom_retried", True)  # written by the dead run: the retry must not inherit it
    beating.record_heartbeat(trial._trial_id)
    return trial


def test_a_dead_enqueued_trial_outside_the_range_is_requeued_as_enqueued(tiny_settings, storage_url, monkeypatch):
    """Optuna's retry re-created the trial with its old distributions and raised ``ValueError``
    inside ``fail_stale_trials``: the live worker crashed and the trial stayed FAIL."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 1)
    make_narrow_study("dead", storage_url, replace(tiny_settings, trials=1), [SCRATCH, RECOMMENDED])
    control, candidate = leave_dead(storage_url, "dead"), leave_dead(storage_url, "dead")
    time.sleep(2.2)
    study = optuna.load_study(study_name="dead", storage=open_storage(storage_url))
    optuna.storages.fail_stale_trials(study)  # raised ValueError before

    trials = study.get_trials(deepcopy=False)
    for dead, (protocol, attrs) in ((control, SCRATCH), (candidate, RECOMMENDED)):
        assert trials[dead.number].state == TrialState.FAIL
        (retry,) = [t for t in trials if retried_trial_number(t) == dead.number]
        assert retry.state == TrialState.WAITING
        assert queued_params(retry) == protocol.to_dict() == dead.params
        assert retry.user_attrs == attrs  # still a control / a candidate; nothing of the dead run
        assert not is_sampled(retry)  # queued as it first was: the sampler does not count it


def test_a_worker_killed_inside_ask_leaves_a_trial_that_is_rerun(tiny_settings, storage_url, monkeypatch):
    """A worker killed between popping a queued trial and its first heartbeat (inside ``ask``, while
    the sampler works): the trial never beat, so Optuna never found it stale and the control stayed
    RUNNING for good (seen as a flaky ``test_stopped_workers_trials_are_requeued``)."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 1)
    make_narrow_study("in-ask", storage_url, replace(tiny_settings, trials=1), [SCRATCH])
    study = optuna.load_study(study_name="in-ask", storage=open_storage(storage_url))
    with pytest.warns(UserWarning, match="Heartbeat"):
        popped, fresh = study.ask(), study.ask()  # the control, then a new trial; no heartbeat thread
    time.sleep(2.2)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert trials[popped.number].state == trials[fresh.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if retried_trial_number(t) == popped.number]
    assert retry.user_attrs == SCRATCH[1] and queued_params(retry) == SCRATCH[0].to_dict()
    (again,) = [t for t in trials if retried_trial_number(t) == fresh.number]
    assert again.state == TrialState.WAITING and is_sampled(again) and again.params == {}


def test_a_dead_sampled_trial_is_requeued_with_its_parameters(tiny_settings, storage_url, monkeypatch):
    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 1)
    make_narrow_study("sampled", storage_url, replace(tiny_settings, trials=1), [])
    dead = leave_dead(storage_url, "sampled")
    time.sleep(2.2)
    study = optuna.load_study(study_name="sampled", storage=open_storage(storage_url))
    optuna.storages.fail_stale_trials(study)
    (retry,) = [t for t in study.get_trials(deepcopy=False) if retried_trial_number(t) == dead.number]
    assert retry.state == TrialState.WAITING and retry.params == dead.params
    assert retry.distributions == study.trials[dead.number].distributions
    assert retry.user_attrs == {} and is_sampled(retry)


# --- the real thing: SIGKILL and Ctrl-C of the real CLI ---------------------------------------------

COMMON = (
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
    "48",
    "--trials",
    "2",
    "--device",
    "cpu",
    "--pick",
    "val",
)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "AUTOTRANSFER_CACHE": str(tmp_path / "cache"),
        "AUTOTRANSFER_SURFACE": str(tmp_path / "surface.json"),
        "COLUMNS": "200",
        # a dead run's trial is stale after 3 s for the run that resumes it
        "AUTOTRANSFER_HEARTBEAT": "1",
        "AUTOTRANSFER_GRACE": "3",
        **extra,
    }


def _ctrl_c_as_in_a_terminal() -> None:
    # a shell starts background jobs (a CI runner's `cmd &`) with SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored: give the child the terminal's default, where Ctrl-C is delivered
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_tune(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(ENTRY), "tune", *COMMON, *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )


def run_tune(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ENTRY), "tune", *COMMON, *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for_running(proc: subprocess.Popen, url: str, name: str, source: str, timeout: float = 240):
    """The trial queued with ``source`` once it is running and has reported a validation step."""
    storage = open_storage(url, heartbeat=False)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - the study is not created yet
            trials = []
        for t in trials:
            if t.state == TrialState.RUNNING and t.user_attrs.get(SOURCE_ATTR) == source and t.intermediate_values:
                return t
        time.sleep(0.1)
    raise AssertionError(f"no running {source} trial within {timeout} s")


pytestmark_cli = pytest.mark.skipif(not ENTRY.exists(), reason="the autotransfer console script is not installed")


@pytestmark_cli
def test_killed_tune_reruns_an_out_of_range_candidate_and_finishes(tmp_path):
    """Single process: SIGKILL ``tune`` on an enqueued candidate outside the study's range, then re-run
    the same ``tune``: it re-runs the candidate with its parameters, retrains and exports (before: the
    re-run exited 1 after the remaining trials, with no retrain and no export)."""
    db = tmp_path / "studies.db"
    url = f"sqlite:///{db}"
    settings = StudySettings(
        target="builtin:digits",
        model="fashion-source",
        n=160,
        resolution=16,
        batch_size=16,
        steps=48,
        trials=2,
        device="cpu",
        pick="val",
    )
    make_narrow_study("killed", url, settings, [SCRATCH, RECOMMENDED])
    proc = start_tune(tmp_path, "--storage", str(db), "--study", "killed")
    try:
        victim = wait_for_running(proc, url, "killed", "survey:recommended")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()

    done = run_tune(tmp_path, "--storage", str(db), "--study", "killed", "--format", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    study = load_study("killed", open_storage(url, heartbeat=False))
    trials = study.get_trials(deepcopy=False)
    assert trials[victim.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if retried_trial_number(t) == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params == RECOMMENDED[0].to_dict()
    assert retry.user_attrs[SOURCE_ATTR] == "survey:recommended"
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(search_trials(study)) >= 2
    assert (tmp_path / "studies" / "exports" / "killed.yaml").exists()
    assert (tmp_path / "studies" / "runs" / "killed" / "model.safetensors").exists()


@pytestmark_cli
def test_ctrl_c_requeues_the_interrupted_control_without_a_traceback_and_resume_runs_it(tmp_path):
    """Ctrl-C during ``tune`` on an enqueued trial (the first control): one clean line, no Optuna
    traceback (§4); the control is re-queued as a control and runs on resume (§1)."""
    db = tmp_path / "studies.db"
    url = f"sqlite:///{db}"
    proc = start_tune(tmp_path, "--storage", str(db), "--study", "ctrlc")
    try:
        victim = wait_for_running(proc, url, "ctrlc", "control:scratch#0")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: everything already recorded is kept." in err
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err + out, err[-3000:]
    assert f"Trial {victim.number} failed" not in err

    storage = open_storage(url, heartbeat=False)
    trials = load_study("ctrlc", storage).get_trials(deepcopy=False)
    assert trials[victim.number].state == TrialState.FAIL
    assert trials[victim.number].user_attrs["fail_reason"] == INTERRUPTED_REASON
    (retry,) = [t for t in trials if retried_trial_number(t) == victim.number]
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs == {CONTROL_ATTR: "scratch", SOURCE_ATTR: "control:scratch#0"}

    done = run_tune(tmp_path, "--storage", str(db), "--study", "ctrlc", "--format", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load_study("ctrlc", storage).get_trials(deepcopy=False)
    (retry,) = [t for t in trials if retried_trial_number(t) == victim.number]
    assert retry.state == TrialState.COMPLETE  # a control: never pruned
    assert retry.params == victim.params == scratch_protocols()[0].to_dict()
    assert retry.user_attrs[CONTROL_ATTR] == "scratch"
    assert sum(t.user_attrs.get(SOURCE_ATTR) == "control:scratch#0" for t in trials) == 2  # once, and its re-run


def test_run_worker_survives_the_dead_candidate(tiny_settings, storage_url, monkeypatch):
    """In process: the worker that finds the dead out-of-range candidate re-runs it and finishes."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 1)
    make_narrow_study("survive", storage_url, replace(tiny_settings, trials=1, prune=False), [RECOMMENDED])
    dead = leave_dead(storage_url, "survive")
    time.sleep(2.2)
    assert run_worker("survive", storage_url, device="cpu", threads=1) >= 1
    trials = load_study("survive", open_storage(storage_url)).get_trials(deepcopy=False)
    (retry,) = [t for t in trials if retried_trial_number(t) == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert "oom_retried" not in retry.user_attrs


def test_only_optunas_records_of_an_interrupted_trial_are_silenced(caplog):
    """§4: the 60-line traceback came from Optuna logging the trial's ``KeyboardInterrupt``; other
    failed trials, and everything else, are still logged."""
    import logging
    import sys as _sys

    from autotransfer.search.retry import quiet_interrupted_trials

    logger = logging.getLogger("optuna.study._optimize")

    def failed(number: int, err: BaseException) -> None:
        try:
            raise err
        except BaseException:  # noqa: BLE001 - only to log it as Optuna does
            logger.warning(
                f"Trial {number} failed with parameters: {{}} because of the following error: {err!r}.",
                exc_info=_sys.exc_info(),
            )
        logger.warning(f"Trial {number} failed with value None.")

    with caplog.at_level(logging.INFO, logger="optuna"), quiet_interrupted_trials():
        failed(3, KeyboardInterrupt())
        failed(4, ValueError("boom"))
        logger.info("Trial 5 finished with value: 0.5")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("Trial 3 ")]
    assert [m for m in messages if m.startswith("Trial 4 ")] == [
        "Trial 4 failed with parameters: {} because of the following error: ValueError('boom').",
        "Trial 4 failed with value None.",
    ]
    assert "Trial 5 finished with value: 0.5" in messages
    failed(6, KeyboardInterrupt())  # outside, nothing is filtered
    assert sum(r.getMessage().startswith("Trial 6 ") for r in caplog.records) == 2
