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
