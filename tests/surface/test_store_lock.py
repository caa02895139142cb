"""Two processes adding points to one surface store at once lose none; writes never touch the umask."""

from __future__ import annotations

import multiprocessing
import os

from autotransfer.core.protocol import Protocol
from autotransfer.surface import SurfacePoint, SurfaceStore

PER_PROCESS = 40


def _point(name: str) -> SurfacePoint:
    return SurfacePoint(
        study=name,
        target="builtin:digits",
        model="fashion-source",
        n=100,
        seed=0,
        log10_n=2.0,
        similarity=0.5,
        protocol=Protocol().to_dict(),
        score=0.5,
        metric="accuracy",
    )


def _add_many(path: str, tag: str, start) -> None:
    start.wait()
    store = SurfaceStore(path)
    for i in range(PER_PROCESS):
        store.add(_point(f"{tag}-{i}"))


def test_two_processes_adding_at_once_lose_no_point(tmp_path):
    path = str(tmp_path / "surface.json")
    SurfaceStore(path).add(_point("seed"))
    context = multiprocessing.get_context("fork")
    start = context.Event()
    procs = [context.Process(target=_add_many, args=(path, tag, start)) for tag in ("a", "b")]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    names = {p.study for p in SurfaceStore(path).load()}
    assert len(names) == 1 + 2 * PER_PROCESS  # without the lock, interleaved read-modify-writes drop points
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".surface.json.")]  # no temp files left


def test_write_keeps_the_mode_and_never_changes_the_umask(tmp_path, monkeypatch):
    store = SurfaceStore(tmp_path / "surface.json")
    umask = os.umask(0o022)
    os.umask(umask)

    def no_umask(_mask):  # another thread's files would get this mask while it is changed
        raise AssertionError("SurfaceStore changed the process umask")

    monkeypatch.setattr(os, "umask", no_umask)
    store.add(_point("x"))
    assert store.path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would
    os.chmod(store.path, 0o600)
    store.add(_point("y"))
    store.remove("x")
    assert store.path.stat().st_mode & 0o777 == 0o600  # an existing store keeps its mode
    assert [p.study for p in store.load()] == ["y"]
