"""Out-of-memory handling: one exception tuple for every supported torch, release, and retry with
gradient accumulation over smaller micro-batches (the protocol stays the same)."""

from __future__ import annotations

import gc
from typing import Callable, TypeVar

import torch

from autotransfer.core.errors import AutotransferError

__all__ = ["OOM_ERRORS", "OutOfMemory", "oom_error_types", "release_memory", "with_oom_retry"]

T = TypeVar("T")


def oom_error_types(module=torch) -> tuple[type[BaseException], ...]:
    """The out-of-memory exception classes ``module`` (a torch) has: ``torch.OutOfMemoryError``
    exists only in recent releases, ``torch.cuda.OutOfMemoryError`` since 1.13 (where both exist
    they name the same class)."""
    found: list[type[BaseException]] = []
    for owner in (module, getattr(module, "cuda", None)):
        cls = getattr(owner, "OutOfMemoryError", None)
        if cls is not None and cls not in found:
            found.append(cls)
    return tuple(found)


#: What ``with_oom_retry`` catches on this torch.
OOM_ERRORS = oom_error_types()


class OutOfMemory(AutotransferError, RuntimeError):
    """A run that did not fit even one image per micro-batch."""


def release_memory() -> None:
    """Collect garbage (reference cycles of a finished or failed run) and return cached CUDA blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def with_oom_retry(
    run: Callable[[int | None], T],
    micro_batch: int | None,
    batch_size: int,
    *,
    on_shrink: Callable[[int, str], None] | None = None,
) -> tuple[T, int | None]:
    """Call ``run(micro_batch)``; on out-of-memory, release memory and retry at half the micro-batch.

    ``run`` must build everything it trains afresh (backbone, optimizer): each retry starts over.
    Memory is released after leaving the ``except`` block, once the traceback (which holds the
    failed run's model) is gone. ``on_shrink(new_micro_batch, error_line)`` is called before each
    retry. Returns ``(result, micro_batch used)``; raises ``OutOfMemory`` below one image.
    """
    while True:
        failed = ""
        try:
            return run(micro_batch), micro_batch
        except OOM_ERRORS as err:
            failed = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        release_memory()
        current = micro_batch or batch_size
        if current <= 1:
            raise OutOfMemory(f"out of memory even at one image per micro-batch ({failed})")
        micro_batch = max(1, current // 2)
        if on_shrink is not None:
            on_shrink(micro_batch, failed)
