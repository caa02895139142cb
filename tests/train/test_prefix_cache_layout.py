"""Issue 19 §5: the cache key reads no image, and cached features are stored in the layout and
dtype the trial step consumes (the results do not change)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import autotransfer.train.prefix_cache as pc
from autotransfer.backbones import freeze
from autotransfer.search.prepared import device_batches
from autotransfer.train import PrefixCache, TrainConfig, train_protocol
from autotransfer.train.prefix_cache import CachedPrefix, data_identity

from .conftest import SIZE, lite0

CL = torch.channels_last


class _Unreadable(torch.Tensor):
    """A tensor that records every torch function applied to it (attribute reads by name)."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = func.__self__.__name__ if func.__name__ == "__get__" else func.__name__
        cls.calls.append(name)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def study_batches(digits_splits):
    """The search's own batches (``search.prepared.device_batches``) of the digits splits."""
    pre = lite0().preprocessing

    def make(split, resolution=SIZE):
        return device_batches(split, SimpleNamespace(resolution=resolution), pre, torch.device("cpu"))

    return make


def test_identity_reads_only_the_shape_of_the_images(study_batches, digits_splits):
    for batches in (study_batches(digits_splits.train), study_batches(digits_splits.val)):
        saved = batches.images
        batches.images = saved.as_subclass(_Unreadable)
        _Unreadable.calls = []
        try:
            for fingerprint in (batches.fingerprint, None):  # with the split's fingerprint, and without
                batches.fingerprint = fingerprint
                data_identity(batches)
        finally:
            batches.images = saved
        assert set(_Unreadable.calls) == {"shape"}  # no .cpu(), .numpy(), hashing or reduction


def test_identity_separates_data_split_and_resolution(study_batches, digits_splits):
    train, again = study_batches(digits_splits.train), study_batches(digits_splits.train)
    val, bigger = study_batches(digits_splits.val), study_batches(digits_splits.train, SIZE + 8)
    assert train is not again and data_identity(train) == data_identity(again)
    assert len({data_identity(b) for b in (train, val, bigger)}) == 3
    assert train.fingerprint == digits_splits.train.fingerprint and train.fingerprint != val.fingerprint
    other = study_batches(digits_splits.train)
    other.std = tuple(s * 2 for s in other.std)  # other normalisation, same pixels
    assert data_identity(other) != data_identity(train)


def test_without_a_fingerprint_each_object_is_its_own_key(study_batches, digits_splits):
    a, b = study_batches(digits_splits.val), study_batches(digits_splits.val)
    a.fingerprint = b.fingerprint = None
    assert data_identity(a) == data_identity(a) != data_identity(b)


def test_the_cache_serves_an_entry_only_to_the_same_data(study_batches, digits_splits):
    train, again = study_batches(digits_splits.train), study_batches(digits_splits.train)
    val = study_batches(digits_splits.val)
    backbone = lite0()
    freeze(backbone, 3)
    cache = PrefixCache()
    first, _ = cache.get(backbone, 3, train, val, views=1, seed=0, augment=True)
    same, _ = cache.get(backbone, 3, again, val, views=1, seed=0, augment=True)  # equal data, other object
    swapped, _ = cache.get(backbone, 3, val, train, views=1, seed=0, augment=True)
    assert same is first and swapped is not first and (cache.hits, cache.misses) == (1, 2)


def test_study_batches_are_stored_and_batched_channels_last(study_batches, digits_splits):
    batches = study_batches(digits_splits.train)
    n, h, w = len(batches), *batches.image_size
    assert batches.images.is_contiguous(memory_format=CL)
    assert batches.images.untyped_storage().nbytes() == n * h * w * 3  # one copy, as uploaded
    x = batches.augment(torch.arange(8), torch.Generator().manual_seed(0))
    assert x.is_contiguous(memory_format=CL)
    assert x.contiguous(memory_format=CL) is x  # the trial step's conversion is a no-op


@pytest.mark.parametrize("amp", [False, True])
def test_cached_batches_come_in_the_steps_layout_and_dtype(small_batches, amp):
    train, val = small_batches
    backbone = lite0()
    f = backbone.num_groups // 2
    freeze(backbone, f)
    backbone.model.eval().to(memory_format=CL)
    cache = PrefixCache(bf16_build=False)
    entry, _ = cache.get(backbone, f, train, val, views=1, seed=0, augment=True, amp=amp, channels_last=True)
    cache.ensure(entry, [0], backbone, train, channels_last=True)
    assert entry.channels_last and entry.train[0].is_contiguous(memory_format=CL)
    assert entry.train.dtype == (torch.bfloat16 if amp else torch.float16)
    dtype = entry.step_dtype(amp)
    assert dtype == (torch.bfloat16 if amp else torch.float32)
    x = entry.batch(torch.tensor([3, 1, 4]), torch.zeros(3, dtype=torch.long), dtype)
    assert x.dtype == dtype and x.is_contiguous(memory_format=CL)
    torch.testing.assert_close(x.float(), entry.train[0, [3, 1, 4]].float())
    features, _ = next(entry.val_batches(8, dtype))
    assert features.dtype == dtype and features.is_contiguous(memory_format=CL)
    if amp:  # bf16 store under autocast: handed over as stored, no copy
        assert features.data_ptr() == entry.val.data_ptr()


def _old_layout_and_dtype(monkeypatch):
    """The storage before issue 19 §5: NCHW, always converted to float32 per batch."""
    storage = pc._storage
    monkeypatch.setattr(
        pc, "_storage", lambda lead, shape, dtype, device, channels_last: storage(lead, shape, dtype, device, False)
    )
    monkeypatch.setattr(CachedPrefix, "step_dtype", lambda self, amp: torch.float32)


@pytest.mark.parametrize("amp", [False, True])
def test_training_on_the_new_layout_gives_the_old_result(small_batches, monkeypatch, amp):
    train, val = small_batches
    config = TrainConfig(
        lr=0.05, freeze=3, steps=4, eval_every=2, batch_size=16, resolution=SIZE, views=2, seed=2, amp=amp
    )
    new = train_protocol(lite0(), train, val, config, cache=PrefixCache(bf16_build=False))
    with monkeypatch.context() as patch:
        _old_layout_and_dtype(patch)
        old = train_protocol(lite0(), train, val, config, cache=PrefixCache(bf16_build=False))
    assert new.cached and old.cached
    tol = 1e-3 if amp else 1e-5  # equal here; under bf16 autocast the rounding of non-autocast ops may move
    for (step_a, a), (step_b, b) in zip(new.train_loss, old.train_loss):
        assert step_a == step_b and a == pytest.approx(b, rel=tol, abs=tol)
    assert new.final_val_loss == pytest.approx(old.final_val_loss, rel=tol, abs=tol)
