"""Workers: device plans, refusals (one line), dead workers' trials retried, clean stops, local workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import ProtocolSpace
from autotransfer.core.schema import ATTR, RETRY_ATTR, WORKER_ATTR
from autotransfer.search import storage as storage_module
from autotransfer.search.progress import NullUI
from autotransfer.search.retry import pending_retries, retried_trial_number, settle_stale_trials
from autotransfer.search.storage import open_storage
from autotransfer.search.study import load_study, search_trials
from autotransfer.search.workers import (
    launch_local_workers,
    plan_workers,
    run_local_workers,
    run_worker,
    wait_workers,
    worker_tag,
)

# --- device plans ------------------------------------------------------------------------------


def test_plan_splits_cpu_cores_between_workers():
    assert [p.threads for p in plan_workers(1, device="cpu", cores=2)] == [2]
    assert [p.threads for p in plan_workers(2, device="cpu", cores=2)] == [1, 1]
    assert [p.threads for p in plan_workers(3, device="cpu", cores=16)] == [5, 5, 5]
    assert [p.threads for p in plan_workers(3, device="cpu", cores=2)] == [1, 1, 1]  # never 0
    assert {(p.device, p.gpu) for p in plan_workers(2, device="cpu", gpus=["0", "1"], cores=4)} == {("cpu", None)}


def test_plan_puts_one_worker_per_gpu():
    plans = plan_workers(2, device="auto", gpus=["0", "1"], cores=16)
    assert [(p.device, p.gpu) for p in plans] == [("cuda", "0"), ("cuda", "1")]
    # more workers than GPUs: round robin
    assert [p.gpu for p in plan_workers(3, device="cuda", gpus=["GPU-a", "GPU-b"], cores=8)] == [
        "GPU-a",
        "GPU-b",
        "GPU-a",
    ]
    # no GPU: auto falls back to CPU, cuda is refused
    assert {p.device for p in plan_workers(2, device="auto", gpus=[], cores=2)} == {"cpu"}
    with pytest.raises(UserError, match="no.*visible|none is visible"):
        plan_workers(2, device="cuda", gpus=[], cores=2)


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(n=2, threads=0), dict(n=2, device="tpu")])
def test_plan_rejects_bad_values(kwargs):
    n = kwargs.pop("n")
    with pytest.raises(UserError, match="but got"):
        plan_workers(n, cores=2, gpus=[], **kwargs)


def test_in_memory_storage_cannot_be_shared():
    with pytest.raises(UserError, match="memory"):
        launch_local_workers("any", "sqlite:///:memory:", 2, device="cpu")


# --- refusals: one line each ---------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_worker_refuses_a_study_made_on_other_data(make_study, storage_url):
    study = make_study("other-data", trials=2)
    stored = dict(study.user_attrs[ATTR["settings"]], fingerprint="0123456789abcdef" * 4)
    study.set_user_attr(ATTR["settings"], stored)
    with pytest.raises(UserError) as err:
        run_worker("other-data", storage_url, device="cpu")
    text = _one_line(err)
    assert "refused" in text and "fingerprint" in text and "0123456789ab" in text
    assert not load_study("other-data", open_storage(storage_url)).trials  # nothing ran


def test_worker_refuses_other_package_versions(make_study, storage_url):
    study = make_study("other-versions", trials=2)
    study.set_user_attr(ATTR["versions"], {**study.user_attrs[ATTR["versions"]], "torch": "0.0.1"})
    with pytest.raises(UserError) as err:
        run_worker("other-versions", storage_url, device="cpu")
    text = _one_line(err)
    assert "refused" in text and "torch 0.0.1" in text
    assert not load_study("other-versions", open_storage(storage_url)).trials


def test_worker_refuses_a_missing_study(make_study, storage_url):
    make_study("present", trials=1)
    with pytest.raises(UserError) as err:
        run_worker("absent", storage_url, device="cpu")
    text = _one_line(err)
    assert "'absent'" in text and "present" in text  # names the known studies


def test_worker_refuses_an_unreachable_database():
    with pytest.raises(UserError) as err:
        run_worker("any", "postgresql://nobody:secret@127.0.0.1:9/none", device="cpu")
    text = _one_line(err)
    assert "cannot open storage" in text and "127.0.0.1" in text


def test_cli_worker_errors_exit_2_with_one_line(make_study, storage_url):
    make_study("present", trials=1)
    done = subprocess.run(
        [sys.executable, "-m", "autotransfer.cli", "worker", "--study", "absent", "--storage", storage_url, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no study named 'absent'" in lines[0], done.stderr


# --- fault tolerance, in process ------------------------------------------------------------------


class _DiesAtStartUI(NullUI):
    """Gives the dead trial its last heartbeat just as this worker starts its first trial:
    another worker was SIGKILLed at that moment."""

    def __init__(self, storage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id

    def trial_start(self, trial, protocol) -> None:
        if self.trial_id is not None:
            self.storage.record_heartbeat(self.trial_id)
            self.trial_id = None


def test_a_dead_workers_trial_is_retried_even_when_the_budget_is_already_met(make_study, storage_url, monkeypatch):
    """A worker died moments before the budget was met: the surviving worker must not stop
    before the dead trial is found stale, re-queued and run (with its original number)."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 4)
    make_study("dead-worker", trials=1, enqueue=1)
    # what a SIGKILLed worker leaves behind: a RUNNING trial with parameters and a last heartbeat
    beating = open_storage(storage_url)
    study = optuna.load_study(study_name="dead-worker", storage=beating)
    with pytest.warns(UserWarning, match="Heartbeat"):
        dead = study.ask()  # the enqueued protocol
    ProtocolSpace().suggest(dead)
    dead.set_user_attr(WORKER_ATTR, "elsewhere:1")

    ui = _DiesAtStartUI(beating, dead._trial_id)
    done = run_worker("dead-worker", storage_url, device="cpu", threads=1, ui=ui)

    trials = load_study("dead-worker", open_storage(storage_url)).trials
    assert done == len(search_trials(load_study("dead-worker", open_storage(storage_url)))) == 2
    assert trials[dead.number].state == TrialState.FAIL
    retry = [t for t in trials if retried_trial_number(t) == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == dead.params
    assert retry[0].user_attrs[RETRY_ATTR] == dead.number
    assert retry[0].user_attrs[WORKER_ATTR] == worker_tag()
    # the worker met the budget with a fresh trial first, then waited for the dead one
    others = [t for t in trials if t.number not in (dead.number, retry[0].number)]
    # (a protocol drawn from the wide space may diverge: such trials fail with their reason)
    assert all("diverged" in t.user_attrs.get("fail_reason", "") for t in others if t.state == TrialState.FAIL)
    fresh = [t for t in others if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(fresh) == 1 and fresh[0].number < retry[0].number
    assert fresh[0].datetime_complete <= retry[0].datetime_start


class _StallingUI(NullUI):
    """Plays another worker that judged this worker's first trial stale mid-run (a long stall)."""

    def __init__(self, storage) -> None:
        self.storage = storage
        self.trial_id = None
        self.failed_number = None

    def trial_start(self, trial, protocol) -> None:
        self.trial_id = self.trial_id or trial._trial_id
        if self.failed_number is None:
            self.failed_number = trial.number

    def trial_progress(self, step: int, total: int) -> None:
        if step >= 4 and self.storage.get_trial(self.trial_id).state == TrialState.RUNNING:
            self.storage.set_trial_state_values(self.trial_id, TrialState.FAIL)


def test_a_worker_whose_trial_was_taken_away_carries_on(make_study, storage_url):
    make_study("stalled", trials=2, enqueue=1)
    ui = _StallingUI(open_storage(storage_url, heartbeat=False))
    done = run_worker("stalled", storage_url, device="cpu", threads=1, ui=ui)
    study = load_study("stalled", open_storage(storage_url))
    assert done == len(search_trials(study)) == 2
    assert ui.failed_number == 0 and study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["source"] == "survey:recommended"


# --- local worker processes ------------------------------------------------------------------------


def test_local_workers_share_one_sqlite_study(make_study, storage_url, tmp_path):
    make_study("local", trials=4, enqueue=1)
    done = run_local_workers("local", storage_url, 2, device="cpu", log_dir=tmp_path / "logs")
    study = load_study("local", open_storage(storage_url))
    assert done == len(search_trials(study)) >= 4
    assert len({t.user_attrs[WORKER_ATTR] for t in study.trials}) == 2  # both workers ran trials
    keys = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(keys) == len(set(keys))  # workers draw their own parameters: no set ran twice
    assert study.trials[0].user_attrs["source"] == "survey:recommended"  # the queue is shared
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_stopped_workers_trials_are_requeued(make_study, storage_url, tmp_path, monkeypatch):
    """Stopping workers (Ctrl-C in ``tune --workers``) keeps every finished trial; the trial in
    flight is found stale and re-queued with its parameters for the next run."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD", 3)
    make_study("stopped", trials=100, enqueue=1)
    env = {"AUTOTRANSFER_HEARTBEAT": "1", "AUTOTRANSFER_GRACE": "3"}
    procs = launch_local_workers("stopped", storage_url, 1, device="cpu", env=env, log_dir=tmp_path / "logs")
    storage = open_storage(storage_url)
    deadline = time.monotonic() + 90
    while not [t for t in _trials(storage) if t.state == TrialState.RUNNING and t.intermediate_values]:
        assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "logs" / "worker-0.log").read_text()
        time.sleep(0.2)
    with pytest.raises(TimeoutError):
        wait_workers(procs, timeout=0.1)  # stops them by PID
    assert procs[0].returncode == -signal.SIGKILL
    before = _trials(storage)
    in_flight = [t for t in before if t.state == TrialState.RUNNING]
    assert len(in_flight) == 1
    time.sleep(3.5)
    settle_stale_trials(optuna.load_study(study_name="stopped", storage=storage))
    after = _trials(storage)
    assert all(after[t.number].value == t.value for t in before if t.state == TrialState.COMPLETE)
    assert after[in_flight[0].number].state == TrialState.FAIL
    (retry,) = [t for t in after if retried_trial_number(t) == in_flight[0].number]
    assert retry.state == TrialState.WAITING
    # queued as it first was: an enqueued trial with its fixed values, a sampled one with its parameters
    assert (retry.params or retry.system_attrs.get("fixed_params", {})) == in_flight[0].params
    assert [t.number for t in pending_retries(optuna.load_study(study_name="stopped", storage=storage))] == [
        retry.number
    ]


def _trials(storage):
    return optuna.load_study(study_name="stopped", storage=storage).get_trials(deepcopy=False)
