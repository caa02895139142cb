"""Storage opening: default SQLite, journal files, and one-line errors for bad storages."""

from __future__ import annotations

import optuna
import pytest

from autotransfer.core.errors import UserError
from autotransfer.search.storage import open_storage, storage_location


def test_sqlite_and_journal_open(tmp_path):
    db = tmp_path / "sub" / "a.db"
    storage = open_storage(f"sqlite:///{db}")
    assert isinstance(storage, optuna.storages.RDBStorage)
    optuna.create_study(study_name="x", storage=storage)
    assert db.exists()
    journal = open_storage(str(tmp_path / "j.log"))
    optuna.create_study(study_name="y", storage=journal)
    assert (tmp_path / "j.log").stat().st_size > 0
    assert storage_location(None) == "sqlite:///studies/autotransfer.db"
    assert storage_location("x.db") == "sqlite:///x.db"


def test_corrupt_sqlite_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 10)
    with pytest.raises(UserError, match="bad.db") as info:
        open_storage(f"sqlite:///{bad}")
    assert "\n" not in str(info.value)


def test_unreachable_database_is_one_line_error():
    with pytest.raises(UserError, match="cannot open storage") as info:
        open_storage("postgresql://nobody:pw@127.0.0.1:9/none")
    assert "\n" not in str(info.value)


def _claim_all(url: str, ids: list[int], start, queue) -> None:
    """One process: wait for the others, then try to move every trial from WAITING to RUNNING."""
    from optuna.trial import TrialState

    storage = open_storage(url, heartbeat=False)
    start.wait()
    queue.put([i for i in ids if storage.set_trial_state_values(i, TrialState.RUNNING)])


def test_a_waiting_trial_is_claimed_by_one_process_only(tmp_path):
    """Optuna's ``ask`` pops a WAITING (enqueued) trial by reading its state and then writing
    RUNNING; on SQLite the read takes no lock, so two workers could both pop it, and the slower one
    died on tell ("Cannot tell a COMPLETE trial"). Seen in CI with two local workers."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url, heartbeat=False))
    for x in range(40):
        study.enqueue_trial({"x": x}, skip_if_exists=False)
    ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    context = multiprocessing.get_context("spawn")
    start, queue = context.Barrier(4), context.Queue()
    procs = [context.Process(target=_claim_all, args=(url, ids, start, queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    claims = [i for _ in procs for i in queue.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=60)
    assert sorted(claims) == sorted(ids)  # every trial claimed, and by exactly one process
