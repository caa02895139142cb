"""Issue 31, the outputs: a full disk at the model folder and during the search, ``predict``'s
memory, progress and manifest rule, broken weights, the model folder's file modes, the cache's cap.

Disk full is simulated with ``OSError(ENOSPC)`` (and safetensors' own wording) at the write, and
checked once on a real 4 MB tmpfs when this machine lets the test mount one (root), skipped else.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import autotransfer
from autotransfer.core.errors import UserError

ENTRY = Path(sys.executable).with_name("autotransfer")
needs_entry = pytest.mark.skipif(not ENTRY.exists(), reason="the autotransfer console script is not installed")
CLASSES = ["a", "b", "c"]


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "AUTOTRANSFER_CACHE": str(cwd / "cache"),
        "AUTOTRANSFER_SURFACE": str(cwd / "surface.json"),
        "COLUMNS": "200",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        **(env or {}),
    }
    return subprocess.run([str(ENTRY), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=environment)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def backbones():
    """Three small fine-tuned-looking backbones (the lab's narrow ResNet, random heads)."""
    from autotransfer.backbones import create_backbone

    torch.manual_seed(0)
    out = []
    for _ in range(3):
        backbone = create_backbone("fashion-source", num_classes=len(CLASSES))
        with torch.no_grad():
            backbone.model.get_classifier().weight.normal_(0, 0.05)
        out.append(backbone)
    return out


@pytest.fixture(scope="module")
def settings():
    from autotransfer.core.settings import StudySettings

    return StudySettings(target="builtin:digits", model="fashion-source", resolution=16, device="cpu")


def save_ensemble(backbones, directory: Path, settings, **kwargs) -> Path:
    from autotransfer.core.protocol import Protocol
    from autotransfer.handback.model_card import save_tuned_ensemble

    members = [
        (b, Protocol(), {"trial": i, "val_score": 0.5, "test_score": 0.5, "trained_on": "train+val"})
        for i, b in enumerate(backbones)
    ]
    return save_tuned_ensemble(
        members, directory, settings, classes=CLASSES, test_score=0.5, test_images=10, versions={}, **kwargs
    )


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, backbones, settings) -> Path:
    """A single-network model folder at 16 px."""
    return save_ensemble(backbones[:1], tmp_path_factory.mktemp("model") / "single", settings)


# -- a full disk at the model folder -----------------------------------------------------------------


def full_at_call(monkeypatch, n: int, error: Exception) -> list[str]:
    """Make the ``n``-th ``safetensors.torch.save_file`` call (1-based) raise ``error``."""
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == n:
            raise error
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return calls


class SafetensorError(Exception):
    """safetensors' own error type: not an OSError, only its message says the disk is full."""


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
    ids=["ENOSPC", "safetensors"],
)
def test_disk_full_at_the_model_folder_leaves_no_half_folder(tmp_path, monkeypatch, backbones, settings, error):
    target = tmp_path / "runs" / "study"
    calls = full_at_call(monkeypatch, 3, error)  # members/2 and members/3 written, then the root model
    with pytest.raises(UserError) as caught:
        save_ensemble(backbones, target, settings)
    assert len(calls) == 3
    message = str(caught.value)
    assert "no space left" in message and repr(str(target)) in message and "needs about" in message, message
    assert "\n" not in message
    assert not target.exists()  # neither members/2 and members/3 without a root model, nor anything
    assert list((tmp_path / "runs").iterdir()) == []  # no temporary sibling left behind


def test_disk_full_replacing_a_model_folder_keeps_the_old_one(tmp_path, monkeypatch, backbones, settings):
    target = tmp_path / "runs" / "study"
    save_ensemble(backbones, target, settings)
    before = snapshot(target)
    assert {"config.json", "model.safetensors", "README.md", "members/2/model.safetensors"} <= set(before)
    full_at_call(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(UserError, match="no space left"):
        save_ensemble(backbones[:2], target, settings)
    assert snapshot(target) == before  # untouched, byte for byte
    assert [p.name for p in target.parent.iterdir()] == ["study"]


def test_a_new_model_folder_replaces_the_old_one_whole(tmp_path, backbones, settings):
    target = tmp_path / "study"
    save_ensemble(backbones, target, settings)
    save_ensemble(backbones[:1], target, settings, files={"metrics.json": "{}\n"})
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    card = (target / "README.md").read_text()
    # the card names the final folder (by its name: no path of this machine), not the staging one
    assert 'local-dir:study"' in card and str(tmp_path) not in card and ".tmp-" not in card
    predictor = autotransfer.load_model(target, device="cpu")
    assert len(predictor.members) == 1


def test_a_folder_holding_other_files_is_not_replaced(tmp_path, backbones, settings):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not part of a model folder.*'notes.txt'"):
        save_ensemble(backbones[:1], tmp_path, settings)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _mount_tmpfs(where: Path, size: str) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def test_disk_full_on_a_real_small_tmpfs(tmp_path, backbones, settings):
    disk = tmp_path / "small"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(UserError) as caught:
            save_ensemble(backbones, disk / "study", settings)  # 3 x 11 MB of weights on 4 MB
        assert "no space left" in str(caught.value) and repr(str(disk / "study")) in str(caught.value)
        assert list(disk.iterdir()) == []
        # SQLite on the same full disk: what Optuna turns into "StorageInternalError ... max length"
        from autotransfer.core.diskspace import disk_full_cause

        connection = sqlite3.connect(disk / "db.sqlite")
        connection.execute("create table t (x blob)")
        with pytest.raises(sqlite3.OperationalError) as full:
            for _ in range(100):
                connection.execute("insert into t values (?)", (b"x" * 100_000,))
                connection.commit()
        connection.close()
        assert disk_full_cause(full.value) is full.value
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def sqlite_full_in_optuna():
    """What Optuna raises when SQLite's disk is full: a misleading StorageInternalError whose cause is
    SQLAlchemy's OperationalError around sqlite3's "database or disk is full"."""
    import optuna
    import sqlalchemy.exc

    try:
        raise sqlalchemy.exc.OperationalError(
            "INSERT INTO trial_values", {}, sqlite3.OperationalError("database or disk is full")
        )
    except sqlalchemy.exc.OperationalError as err:
        raise optuna.exceptions.StorageInternalError(
            "An exception is raised during the commit. This typically happens due to invalid data in the"
            " commit, e.g. exceeding max length."
        ) from err


def test_disk_full_during_the_search_is_one_line(tmp_path, monkeypatch, capsys):
    """``tune`` (the CLI, in-process) ending in that error prints one line naming the database and
    exits 2; before, 154 lines of traceback ending in "exceeding max length"."""
    import signal

    from autotransfer import cli
    from autotransfer.pipeline import tune as tune_module

    monkeypatch.setattr(tune_module, "tune", lambda *args, **kwargs: sqlite_full_in_optuna())
    monkeypatch.setenv("AUTOTRANSFER_SURFACE", str(tmp_path / "surface.json"))
    monkeypatch.delenv("AUTOTRANSFER_STORAGE", raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as done:
            cli.app(
                ["tune", "builtin:digits", "--out", str(tmp_path / "out"), "--device", "cpu"], prog_name="autotransfer"
            )
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert done.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no space left" in line and str(tmp_path / "out" / "autotransfer.db") in line and "resumes" in line, line


def test_the_search_disk_full_line_names_the_database(tmp_path):
    from autotransfer.core.diskspace import disk_full_as_user_error

    database = tmp_path / "autotransfer.db"
    with pytest.raises(UserError) as caught:
        with disk_full_as_user_error(database, then="run tune again"):
            sqlite_full_in_optuna()
    message = str(caught.value)
    assert repr(str(database)) in message and "free" in message and "run tune again" in message
    with pytest.raises(ValueError):  # anything else passes through unchanged
        with disk_full_as_user_error(database):
            raise ValueError("not a disk")


# -- the model folder's files: group-readable like the rest ---------------------------------------


def test_model_folder_files_share_one_mode(tmp_path, backbones, settings):
    from autotransfer.backbones.model_dir import write_model_dir

    old = os.umask(0o022)
    try:
        save_ensemble(backbones[:2], tmp_path / "ensemble", settings)
        write_model_dir(backbones[0], tmp_path / "plain", label_names=CLASSES, input_size=16)
    finally:
        os.umask(old)
    for folder in (tmp_path / "ensemble", tmp_path / "ensemble" / "members" / "2", tmp_path / "plain"):
        assert (folder.stat().st_mode & 0o777) == 0o755, folder
        for name in ("config.json", "model.safetensors"):
            assert ((folder / name).stat().st_mode & 0o777) == 0o644, folder / name  # safetensors alone: 0600


# -- broken weights ------------------------------------------------------------------------------


def test_nan_weights_are_refused_at_load_naming_the_file(tmp_path, backbones, settings):
    from safetensors.torch import load_file, save_file

    folder = save_ensemble(backbones[:2], tmp_path / "nan", settings)
    broken = folder / "members" / "2" / "model.safetensors"
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in load_file(broken).items()}
    save_file(state, str(broken))
    with pytest.raises(UserError, match=r"members/2/model\.safetensors' is broken.*NaN"):
        autotransfer.load_model(folder, device="cpu")


def test_weights_whose_outputs_are_not_finite_are_refused_at_load(tmp_path, backbones, settings):
    from safetensors.torch import load_file, save_file

    folder = save_ensemble(backbones[:1], tmp_path / "negvar", settings)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    state["bn1.running_var"] = -torch.ones_like(state["bn1.running_var"])  # finite, but sqrt(-1) = NaN
    save_file(state, str(weights))
    with pytest.raises(UserError, match=r"negvar/model\.safetensors' is broken.*outputs"):
        autotransfer.load_model(folder, device="cpu")


@needs_entry
def test_predict_with_nan_weights_is_one_line_exit_2(tmp_path, model_folder):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "copy"
    shutil.copytree(model_folder, folder)
    state = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in load_file(folder / "model.safetensors").items()
    }
    save_file(state, str(folder / "model.safetensors"))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    done = run_cli("predict", str(folder), str(tmp_path / "x.png"), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 2 and "model.safetensors' is broken" in one_error_line(done.stderr)


# -- predict: the manifest rule, streaming, the bounded decode ------------------------------------


def test_predict_manifest_rows_must_stay_inside_its_folder(tmp_path):
    from autotransfer.handback.predict import list_image_files

    (tmp_path / "data").mkdir()
    (tmp_path / "private.png").write_bytes(b"secret")
    for row, needle in (("../private.png", "lies outside"), (str(tmp_path / "private.png"), "absolute path")):
        manifest = tmp_path / "data" / "list.csv"
        manifest.write_text(f"path\n{row}\n")
        with pytest.raises(UserError, match=f"line 2 .*{needle}.*--allow-outside"):
            list_image_files([manifest])
        files, _ = list_image_files([manifest], allow_outside=True)
        assert [f.resolve() for f in files] == [(tmp_path / "private.png").resolve()]
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "private.png")
    manifest.write_text("path\nlink.png\n")
    with pytest.raises(UserError, match="lies outside"):
        list_image_files([manifest])


def write_pngs(folder: Path, count: int, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_files_streams_batch_by_batch(tmp_path, monkeypatch, model_folder):
    """The first batch is scored, and the progress moves, before the last file is read."""
    import autotransfer.handback.predict as predict_module

    paths = write_pngs(tmp_path / "images", 10)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    paths.insert(5, tmp_path / "images" / "broken.png")
    events: list[tuple[str, object]] = []
    real = Path.read_bytes

    def read_bytes(self):
        events.append(("read", self.name))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(predict_module, "BATCH_SIZE", 4)
    monkeypatch.setattr(predict_module, "CPU_BATCH_SIZE", 4, raising=False)
    monkeypatch.setattr(predict_module, "DECODE_CHUNK", 2, raising=False)
    predictor = autotransfer.load_model(model_folder, device="cpu")
    events.clear()
    found = predictor.predict_files(paths, progress=lambda done, total: events.append(("progress", done)))
    reads = [i for i, (kind, _) in enumerate(events) if kind == "read"]
    progress = [value for kind, value in events if kind == "progress"]
    first = next(i for i, (kind, _) in enumerate(events) if kind == "progress")
    assert first < reads[-1], events  # before: every file was read before the first batch
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == len(paths)
    assert found.skipped == [(str(paths[5]), "unreadable")] and len(found.paths) == 10
    expected = predictor.proba_of_arrays([np.asarray(Image.open(p).convert("RGB")) for p in paths if p != paths[5]])
    np.testing.assert_allclose(found.proba, expected, atol=1e-6)


def test_predict_decodes_files_with_the_bounded_decoder(tmp_path, monkeypatch, model_folder):
    """A large photo is decoded reduced (libjpeg's draft), as tune and evaluate read folders,
    in predict_files and in predict_proba on paths alike."""
    import autotransfer.data.decode as decode_module
    import autotransfer.data.folder as folder_module
    from autotransfer.data.folder import DECODE_SIDE

    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(photo, quality=90)
    sides: list[int | None] = []

    def spy(real):
        def decode_bytes(data, max_side=None):
            sides.append(max_side)
            return real(data, max_side=max_side)

        return decode_bytes

    monkeypatch.setattr(decode_module, "decode_bytes", spy(decode_module.decode_bytes))
    monkeypatch.setattr(folder_module, "decode_bytes", spy(folder_module.decode_bytes))
    predictor = autotransfer.load_model(model_folder, device="cpu")
    found = predictor.predict_files([photo])
    from_paths = predictor.predict_proba([photo])
    assert sides == [DECODE_SIDE, DECODE_SIDE], sides  # before: None (full size, 9 MB of pixels)
    reduced = decode_module.decode_bytes(photo.read_bytes(), max_side=DECODE_SIDE)
    assert min(reduced.shape[:2]) == DECODE_SIDE
    np.testing.assert_array_equal(found.proba, predictor.proba_of_arrays([reduced]))
    np.testing.assert_array_equal(from_paths, found.proba)


# -- the cache: capped, a hit is a use, `cache clear` -----------------------------------------------


def _tree(root: Path, count: int, size: int = 40) -> list[Path]:
    return write_pngs(root, count, size)


def test_decode_cache_is_capped_least_recently_used_first(tmp_path, monkeypatch):
    from autotransfer.data.cache import cache_info
    from autotransfer.data.folder import decode_files

    monkeypatch.setenv("AUTOTRANSFER_CACHE", str(tmp_path / "cache"))
    files = _tree(tmp_path / "images", 6)
    entry = 40 * 40 * 3 + 128  # one decoded image: its pixels and the .npy header
    monkeypatch.setenv("AUTOTRANSFER_CACHE_MAX", str(4 * entry))
    decode_files(files[:3])
    folder = next((tmp_path / "cache" / "decoded").iterdir())
    first = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
    os.utime(first[0], (1, 1))  # files[0]'s entry: the oldest ...
    for p in first[1:]:
        os.utime(p, (2, 2))
    decode_files(files[:1])  # ... until a hit makes it the most recent
    decode_files(files[3:])  # 3 more: 6 entries over a cap of 4
    info = cache_info()
    assert info.bytes <= 4 * entry and info.files == 4 and info.limit == 4 * entry
    kept = {p.name for p in folder.iterdir()}
    keys = [hashlib.blake2b(f.read_bytes(), digest_size=20).hexdigest() + ".npy" for f in files]
    assert keys[0] in kept and keys[1] not in kept and keys[2] not in kept  # the two least recently used went


def test_the_cap_reads_sizes_and_refuses_nonsense(monkeypatch):
    from autotransfer.data.cache import DEFAULT_CACHE_MAX, cache_limit

    for raw, expected in (("", DEFAULT_CACHE_MAX), ("500M", 500 * 1024**2), ("1.5GiB", int(1.5 * 1024**3)), ("0", 0)):
        monkeypatch.setenv("AUTOTRANSFER_CACHE_MAX", raw)
        assert cache_limit() == expected, raw
    monkeypatch.setenv("AUTOTRANSFER_CACHE_MAX", "none")
    assert cache_limit() is None
    monkeypatch.setenv("AUTOTRANSFER_CACHE_MAX", "lots")
    with pytest.raises(UserError, match=r"AUTOTRANSFER_CACHE_MAX must be a size .* but got 'lots'"):
        cache_limit()
    assert DEFAULT_CACHE_MAX == 2 * 1024**3


@needs_entry
def test_cache_info_and_clear_commands(tmp_path, monkeypatch):
    from autotransfer.data.folder import decode_files

    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOTRANSFER_CACHE", str(cache))
    decode_files(_tree(tmp_path / "images", 3))
    (cache / "mine.txt").write_text("not autotransfer's")
    done = run_cli("cache", "info", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["root"] == str(cache) and info["files"] == 3 and info["bytes"] > 0 and info["limit"] == 2 * 1024**3
    done = run_cli("cache", "clear", cwd=tmp_path)
    assert done.returncode == 0 and "removed 3 files" in done.stdout, done.stdout + done.stderr
    assert not (cache / "decoded").exists() and (cache / "mine.txt").read_text() == "not autotransfer's"
    done = run_cli("cache", "info", cwd=tmp_path, env={"AUTOTRANSFER_CACHE_MAX": "lots"})
    assert done.returncode == 2 and "AUTOTRANSFER_CACHE_MAX" in one_error_line(done.stderr)
