"""Frozen-prefix caching: cached and uncached forward passes agree; keys, reuse and the byte cap."""

from __future__ import annotations

import pytest
import torch

from autotransfer.backbones import freeze, run_groups
from autotransfer.train import PrefixCache, TrainConfig, train_protocol
from autotransfer.train.loop import _view_indices
from autotransfer.train.prefix_cache import prefix_digest, view_seed

from .conftest import lite0


def _random_head(backbone, seed=0):
    """Give the (zero-initialised) head random weights so logits carry information."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backbone.model.get_submodule(backbone.head_name).parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _from_cache(backbone, feats, f):
    x = feats.float()
    if f < backbone.num_groups:
        x = run_groups(backbone, x, f, backbone.num_groups)
    return backbone.forward_head(x)


@pytest.mark.parametrize("depth", ["one", "half", "all"])
@pytest.mark.parametrize("dtype, channels_last, rtol", [(torch.float32, False, 1e-4), (torch.float16, True, 2e-2)])
def test_cached_and_uncached_logits_agree(small_batches, depth, dtype, channels_last, rtol):
    train, val = small_batches
    backbone = lite0()
    G = backbone.num_groups
    f = {"one": 1, "half": G // 2, "all": G}[depth]
    _random_head(backbone)
    freeze(backbone, f)
    model = backbone.model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cache = PrefixCache(dtype=dtype, chunk_size=10_000, bf16_build=False)
    entry, note = cache.get(backbone, f, train, val, views=2, seed=3, augment=True, channels_last=channels_last)
    assert note is None and entry.train.shape[:2] == (2, len(train)) and entry.built == [False, False]
    cache.ensure(entry, [0, 1], backbone, train, channels_last=channels_last)
    assert entry.built == [True, True]
    assert entry.pooled == (f == G)  # lite0's head starts with global average pooling

    n = len(train)
    with torch.no_grad():
        for view in range(2):
            gen = torch.Generator().manual_seed(view_seed(3, view))
            x = train.augment(torch.arange(n), gen)
            expected = model(x)
            got = _from_cache(backbone, entry.train[view], f)
            scale = expected.abs().max()
            assert scale > 0.1
            assert (got - expected).abs().max() <= rtol * scale
        expected_val = model(val.plain(torch.arange(len(val))))
        got_val = _from_cache(backbone, entry.val, f)
        assert (got_val - expected_val).abs().max() <= rtol * expected_val.abs().max()
    # two views of the same image differ: the bank really holds distinct augmentations
    assert not torch.equal(entry.train[0], entry.train[1])


def test_bf16_build_is_close_to_fp32_and_keyed_apart(small_batches, monkeypatch):
    """On a CPU with native bf16 the prefix is built under bf16 autocast: the features stay
    close to the fp32 ones, the entry says so, and fp32 and bf16 builds never share a key."""
    import autotransfer.train.prefix_cache as pc

    train, val = small_batches
    backbone = lite0()
    f = backbone.num_groups // 2
    freeze(backbone, f)
    monkeypatch.setattr(pc, "native_cpu_bf16", lambda: True)
    cache = PrefixCache()
    fast, _ = cache.get(backbone, f, train, val, views=1, seed=0, augment=True)
    assert fast.bf16 and any("bf16" in n for n in fast.notes)
    assert not cache.builds_in_bf16(torch.device("cpu"), False, torch.float32)  # fp32 store: faithful
    monkeypatch.setattr(pc, "native_cpu_bf16", lambda: False)
    exact, _ = cache.get(backbone, f, train, val, views=1, seed=0, augment=True)
    assert exact is not fast and not exact.bf16 and len(cache) == 2
    for entry in (fast, exact):
        cache.ensure(entry, [0], backbone, train)
    a, b = fast.train[0].float(), exact.train[0].float()
    assert not torch.equal(a, b)  # really computed in another precision
    assert float((a - b).norm() / b.norm()) < 0.05
    assert float((fast.val.float() - exact.val.float()).norm() / exact.val.float().norm()) < 0.05
    assert PrefixCache(bf16_build=False).builds_in_bf16(torch.device("cpu"), True, torch.float16) is False


def test_entries_are_reused_and_keyed_by_weights(small_batches):
    train, val = small_batches
    cache = PrefixCache()
    a, b = lite0(), lite0()  # same shipped weights -> same key
    for backbone in (a, b):
        freeze(backbone, 3)
    first, _ = cache.get(a, 3, train, val, views=2, seed=0, augment=True)
    second, _ = cache.get(b, 3, train, val, views=2, seed=0, augment=True)
    assert second is first and cache.hits == 1 and cache.misses == 1
    other_seed, _ = cache.get(b, 3, train, val, views=2, seed=1, augment=True)
    assert other_seed is not first and len(cache) == 2
    digest = prefix_digest(b, 3)
    with torch.no_grad():
        next(iter(b.model.get_submodule(b.groups[2].modules[0]).parameters())).add_(1.0)
    assert prefix_digest(b, 3) != digest
    changed, _ = cache.get(b, 3, train, val, views=2, seed=0, augment=True)
    assert changed is not first
    # a change in a trainable group (>= f) does not invalidate the prefix
    digest = prefix_digest(b, 3)
    with torch.no_grad():
        next(iter(b.model.get_submodule(b.groups[5].modules[0]).parameters())).add_(1.0)
    assert prefix_digest(b, 3) == digest
    again, _ = cache.get(b, 3, train, val, views=2, seed=0, augment=True)
    assert again is changed


def test_byte_cap_evicts_lru_and_refuses_oversize(small_batches):
    train, val = small_batches
    backbone = lite0()
    freeze(backbone, backbone.num_groups)
    probe = PrefixCache()
    one, _ = probe.get(backbone, 2, train, val, views=1, seed=0, augment=False)
    size = one.nbytes
    cache = PrefixCache(max_bytes=int(size * 1.5))
    cache.get(backbone, 2, train, val, views=1, seed=0, augment=False)
    cache.get(backbone, 2, train, val, views=1, seed=1, augment=True)  # same size, evicts the first
    assert len(cache) == 1 and cache.nbytes <= cache.max_bytes
    entry, note = cache.get(backbone, 2, train, val, views=8, seed=0, augment=True)
    assert entry is None and "MiB" in note and "uncached" in note


def test_over_cap_trial_runs_uncached_with_a_note(small_batches):
    train, val = small_batches
    config = TrainConfig(lr=0.01, freeze=2, steps=2, eval_every=2, batch_size=8, resolution=32, views=2)
    result = train_protocol(lite0(), train, val, config, cache=PrefixCache(max_bytes=1024))
    assert not result.cached and any("uncached" in n for n in result.notes)
    assert result.steps_done == 2 and result.final_score is not None


def test_views_are_built_when_first_needed(small_batches):
    train, val = small_batches  # 48 images
    cache = PrefixCache()
    config = TrainConfig(lr=0.02, freeze=8, steps=3, eval_every=3, batch_size=16, resolution=32, views=4)
    first = train_protocol(lite0(), train, val, config, cache=cache)
    assert first.cached and not first.cache_hit and first.views_built == 1  # one epoch: view 0 only
    longer = train_protocol(lite0(), train, val, config.replace(steps=9, eval_every=9), cache=cache)
    assert longer.cache_hit and longer.views_built == 2  # epochs 1 and 2 add views 1 and 2
    [entry] = cache.entries()
    assert entry.built == [True, True, True, False]
    longest = train_protocol(lite0(), train, val, config.replace(steps=30, eval_every=30), cache=cache)
    assert longest.views_built == 1 and all(entry.built)


def test_epochs_map_to_views():
    gen = torch.Generator().manual_seed(0)
    early = _view_indices([(0, 3), (1, 2)], 4, gen, torch.device("cpu"))
    assert early.tolist() == [0, 0, 0, 1, 1]
    late = _view_indices([(9, 2000)], 4, gen, torch.device("cpu"))
    assert set(late.tolist()) == {0, 1, 2, 3}
