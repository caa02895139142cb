"""The prefix cache's cap on CUDA comes from free memory and the workers per GPU (docs/design.md, "Memory")."""

from __future__ import annotations

import pytest
import torch

from autotransfer.train import PrefixCache
from autotransfer.train.prefix_cache import WORKERS_PER_DEVICE_ENV

GIB = 1 << 30
CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A 100 GiB GPU whose free memory the test sets (nothing reserved by this process)."""
    state = {"free": 100 * GIB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 100 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.delenv(WORKERS_PER_DEVICE_ENV, raising=False)
    return state


def test_cap_is_a_share_of_the_gpu_per_worker(fake_gpu, monkeypatch):
    assert PrefixCache().cap_bytes(CUDA) == int(0.3 * 100 * GIB)
    assert PrefixCache(workers_per_device=4).cap_bytes(CUDA) == int(0.3 * 100 * GIB / 4)
    monkeypatch.setenv(WORKERS_PER_DEVICE_ENV, "4")
    caps = [PrefixCache().cap_bytes(CUDA) for _ in range(4)]
    assert sum(caps) <= 0.3 * 100 * GIB  # four workers' caches together, not 120%
    monkeypatch.setenv(WORKERS_PER_DEVICE_ENV, "junk")
    assert PrefixCache().cap_bytes(CUDA) == int(0.3 * 100 * GIB)


def test_cap_follows_free_memory(fake_gpu):
    fake_gpu["free"] = 10 * GIB  # other processes hold 90 GiB
    assert PrefixCache().cap_bytes(CUDA) == 5 * GIB
    fake_gpu["free"] = 0
    assert PrefixCache().cap_bytes(CUDA) == 0


def test_cap_counts_the_allocators_idle_reserve(fake_gpu, monkeypatch):
    fake_gpu["free"] = 2 * GIB
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * GIB)
    assert PrefixCache().cap_bytes(CUDA) == 4 * GIB  # half of 2 free + 6 idle


def test_explicit_cap_and_cpu_are_unchanged(fake_gpu):
    assert PrefixCache(max_bytes=123).cap_bytes(CUDA) == 123
    assert 0 < PrefixCache().cap_bytes(torch.device("cpu")) <= 4 * GIB
    with pytest.raises(ValueError):
        PrefixCache(workers_per_device=0)


def test_launcher_tells_each_worker_how_many_share_its_gpu(monkeypatch, tmp_path):
    from autotransfer.search import workers

    seen = []

    class FakePopen:
        def __init__(self, command, env, **_):
            seen.append((env["CUDA_VISIBLE_DEVICES"], env[WORKERS_PER_DEVICE_ENV]))

    monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(workers.subprocess, "Popen", FakePopen)
    workers.launch_local_workers("s", f"sqlite:///{tmp_path / 's.db'}", 5, device="cuda")
    assert seen == [("0", "3"), ("1", "2"), ("0", "3"), ("1", "2"), ("0", "3")]
