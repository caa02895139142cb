"""Three real workers on one study in a real PostgreSQL server; one is killed mid-trial and the study survives."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import ProtocolSpace
from autotransfer.core.schema import RETRY_ATTR, SOURCE_ATTR, WORKER_ATTR
from autotransfer.search.retry import retried_trial_number
from autotransfer.search.storage import open_storage
from autotransfer.search.study import create_study, search_trials
from autotransfer.search.workers import launch_local_workers, terminate_workers, wait_workers
from tests.search.conftest import prepared_tiny

pytestmark = pytest.mark.postgres

DEFAULT_URL = "postgresql://autotransfer:autotransfer@127.0.0.1:5432/autotransfer_test"
WORKERS = 3
TRIALS = 8


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """The server from ``AUTOTRANSFER_TEST_POSTGRES_URL`` (or the ``.ci/postgres`` default); skipped when
    unreachable, except in CI (``CI`` set), where a missing server is a failure."""
    url = os.environ.get("AUTOTRANSFER_TEST_POSTGRES_URL") or DEFAULT_URL
    try:
        optuna.get_all_study_summaries(open_storage(url, heartbeat=False), include_best_trial=False)
    except UserError as err:
        message = f"no PostgreSQL server for the scale-out test ({err}): run `bash .ci/postgres`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def study_name(postgres_url, tiny_settings):
    """A fresh study (unique name) with three enqueued protocols; deleted afterwards."""
    from dataclasses import replace

    from autotransfer.prior import linear_probe_protocol, recommended_protocol

    name = f"test-workers-{uuid.uuid4().hex[:10]}"
    settings = replace(tiny_settings, trials=TRIALS, prune=False)
    settings, prepared = prepared_tiny(settings)
    recommended = recommended_protocol()
    enqueue = [
        (recommended, {SOURCE_ATTR: "survey:recommended"}),
        (linear_probe_protocol(), {SOURCE_ATTR: "linear-probe"}),
        (replace(recommended, log10_elr=recommended.log10_elr - 0.5), {SOURCE_ATTR: "lower-elr"}),
    ]
    storage = open_storage(postgres_url, heartbeat=False)
    create_study(name, storage, settings, profile=None, prior=None, space=ProtocolSpace(), enqueue=enqueue)
    yield name
    optuna.delete_study(study_name=name, storage=storage)


def _params_key(trial) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in trial.params.items()))


def test_three_workers_survive_a_killed_worker(postgres_url, study_name, tmp_path):
    storage = open_storage(postgres_url, heartbeat=False)
    # short heartbeats so that the dead worker's trial is found stale within seconds
    env = {"AUTOTRANSFER_HEARTBEAT": "2", "AUTOTRANSFER_GRACE": "6", "PYTHONUNBUFFERED": "1"}
    procs = launch_local_workers(
        study_name, postgres_url, WORKERS, device="cpu", threads=1, env=env, log_dir=tmp_path / "logs"
    )
    by_pid = {p.pid: p for p in procs}
    try:
        # kill a worker once its running trial has reported a validation step
        victim = killed_trial = None
        deadline = time.monotonic() + 90
        while victim is None:
            assert time.monotonic() < deadline, "no worker reported a validation step within 90 s"
            assert all(p.poll() is None for p in procs), _logs(tmp_path)
            study = optuna.load_study(study_name=study_name, storage=storage)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                tag = t.user_attrs.get(WORKER_ATTR, "")
                pid = int(tag.rsplit(":", 1)[-1]) if tag else None
                # an enqueued (known good) protocol, so that its retry completes rather than diverges
                if t.intermediate_values and pid in by_pid and SOURCE_ATTR in t.user_attrs:
                    victim, killed_trial = by_pid[pid], t.number
                    break
            else:
                time.sleep(0.2)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        snapshot = {
            t.number: t.value
            for t in optuna.load_study(study_name=study_name, storage=storage).trials
            if t.state == TrialState.COMPLETE
        }

        codes = wait_workers(procs, timeout=150)
        assert codes[procs.index(victim)] == -signal.SIGKILL
        assert [c for p, c in zip(procs, codes) if p is not victim] == [0, 0], _logs(tmp_path)
    finally:
        terminate_workers(procs)
    assert all(p.poll() is not None for p in procs)

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    # the study reached its budget (concurrent workers may overshoot: no exact count)
    assert len(search_trials(study)) >= TRIALS
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the killed trial is FAIL, and a retry of it carries its number and completed on another worker
    killed = trials[killed_trial]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if retried_trial_number(t) == killed_trial]
    assert len(retries) == 1, [(t.number, t.state.name) for t in retries]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.value is not None
    assert retry.params == killed.params
    assert retry.user_attrs[RETRY_ATTR] == killed_trial
    assert retry.user_attrs[WORKER_ATTR] != killed.user_attrs[WORKER_ATTR]
    assert retry.datetime_start >= killed.datetime_complete  # never ran at the same time
    # no parameter set ran twice, except the killed trial as its retry
    counts = Counter(_params_key(t) for t in trials)
    assert {key: n for key, n in counts.items() if n > 1} == {_params_key(killed): 2}
    # the enqueued protocols each ran once
    sources = Counter(t.user_attrs.get(SOURCE_ATTR) for t in trials if t.state == TrialState.COMPLETE)
    assert sources["survey:recommended"] == sources["linear-probe"] == sources["lower-elr"] == 1
    # every trial completed before the kill is kept as it was
    final = {t.number: t.value for t in trials}
    assert all(final[n] == v for n, v in snapshot.items())
    # each live worker ran one trial at a time
    for tag in {t.user_attrs[WORKER_ATTR] for t in trials if t.state == TrialState.COMPLETE}:
        spans = sorted(
            (t.datetime_start, t.datetime_complete)
            for t in trials
            if t.user_attrs.get(WORKER_ATTR) == tag and t.state == TrialState.COMPLETE
        )
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _logs(tmp_path) -> str:
    parts = []
    for path in sorted((tmp_path / "logs").glob("worker-*.log")):
        parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)


def test_a_killed_workers_out_of_range_candidate_is_rerun_by_the_survivor(postgres_url, tiny_settings, tmp_path):
    """Issue 16, §1: two workers; the one running an enqueued candidate whose values lie outside the
    study's range (the survey's ``freeze_frac`` 0.0 in [0.68, 1]) is SIGKILLed mid-trial. Before, the
    survivor died re-queueing it (``ValueError: The value 0.0 of parameter 'freeze_frac' isn't
    contained ...``) and the candidate never ran again."""
    from dataclasses import replace

    from tests.search.test_retry import RECOMMENDED, SCRATCH, make_narrow_study

    name = f"test-killed-candidate-{uuid.uuid4().hex[:10]}"
    storage = open_storage(postgres_url, heartbeat=False)
    settings = replace(tiny_settings, trials=3, steps=48, prune=False)
    make_narrow_study(name, postgres_url, settings, [RECOMMENDED, SCRATCH])
    env = {"AUTOTRANSFER_HEARTBEAT": "1", "AUTOTRANSFER_GRACE": "3", "PYTHONUNBUFFERED": "1"}
    procs = launch_local_workers(name, postgres_url, 2, device="cpu", threads=1, env=env, log_dir=tmp_path / "logs")
    by_pid = {p.pid: p for p in procs}
    try:
        victim = killed = None
        deadline = time.monotonic() + 120
        while victim is None:
            assert time.monotonic() < deadline, "the candidate did not report a validation step within 120 s"
            assert all(p.poll() is None for p in procs), _logs(tmp_path)
            for t in optuna.load_study(study_name=name, storage=storage).get_trials(
                deepcopy=False, states=(TrialState.RUNNING,)
            ):
                tag = t.user_attrs.get(WORKER_ATTR, "")
                pid = int(tag.rsplit(":", 1)[-1]) if tag else None
                if t.user_attrs.get(SOURCE_ATTR) == "survey:recommended" and t.intermediate_values and pid in by_pid:
                    victim, killed = by_pid[pid], t
                    break
            else:
                time.sleep(0.1)
        os.kill(victim.pid, signal.SIGKILL)
        codes = wait_workers(procs, timeout=240)
        assert codes[procs.index(victim)] == -signal.SIGKILL
        assert [c for p, c in zip(procs, codes) if p is not victim] == [0], _logs(tmp_path)
        assert "isn't contained" not in _logs(tmp_path)
    finally:
        terminate_workers(procs)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        finished = len(search_trials(study))
        optuna.delete_study(study_name=name, storage=storage)

    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if retried_trial_number(t) == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params == RECOMMENDED[0].to_dict()
    assert retry.user_attrs[SOURCE_ATTR] == "survey:recommended"
    assert retry.user_attrs[RETRY_ATTR] == killed.number
    assert retry.user_attrs[WORKER_ATTR] != killed.user_attrs[WORKER_ATTR]
    # the control ran once, as a control
    controls = [t for t in trials if t.user_attrs.get("control") == "scratch"]
    assert [t.state for t in controls] == [TrialState.COMPLETE]
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert finished >= 3
