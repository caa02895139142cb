"""Schedules on real data: LP-FT's first stage, gradual unfreezing's order, the prefix cache, one-stage."""

from __future__ import annotations

import json

import pytest
import torch

from autotransfer.train import PrefixCache, TrainConfig, train_protocol
from autotransfer.train.schedule import frozen_depth, join_steps, unfreeze_steps

from .conftest import lite0
from .test_loop import _group_of, _state


def _group_state(backbone, state, groups):
    """The floating-point entries (parameters and BN buffers) of ``state`` in ``groups``."""
    of = _group_of(backbone)
    return {k: v for k, v in state.items() if of[k] in groups and v.dtype.is_floating_point}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_join_steps_follow_the_stated_rules():
    # G = 8, f = 2, r = 1: pretrained trainable groups 2..6; stage = round(0.3 * 100) = 30 steps
    args = (100, 0.3, 2, 1, 8)
    assert unfreeze_steps(100, "one-stage", 0.3, 2, 1, 8) == []
    assert unfreeze_steps(100, "lp-ft", *args[1:]) == [(31, g) for g in (6, 5, 4, 3, 2)]
    assert unfreeze_steps(100, "gradual", *args[1:]) == [(7, 6), (13, 5), (19, 4), (25, 3), (31, 2)]
    assert [frozen_depth(s, 100, "gradual", *args[1:]) for s in (1, 6, 7, 30, 31, 100)] == [7, 7, 6, 3, 2, 2]
    assert [frozen_depth(s, 100, "lp-ft", *args[1:]) for s in (1, 30, 31)] == [7, 7, 2]
    assert all(frozen_depth(s, 100, "one-stage", *args[1:]) == 2 for s in (1, 50))
    # nothing pretrained left to train (f = G - r), or no first stage: the same as one-stage
    for schedule in ("lp-ft", "gradual"):
        assert unfreeze_steps(100, schedule, 0.3, 5, 3, 8) == [] and frozen_depth(1, 100, schedule, 0.3, 5, 3, 8) == 5
        assert unfreeze_steps(100, schedule, 0.0, 2, 1, 8) == [] and frozen_depth(1, 100, schedule, 0.0, 2, 1, 8) == 2
    # one-stage: every group from step 1
    assert join_steps(10, "one-stage", 0.5, 0, 0, 3) == [(1, 2), (1, 1), (1, 0)]
    with pytest.raises(ValueError, match="schedule"):
        join_steps(10, "bogus", 0.3, 0, 0, 3)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("path", [{"foreach": True}, {"foreach": False}, {"fused": True}])
def test_optimizers_skip_parameters_without_grad(optimizer, path):
    """A parameter with ``requires_grad=False`` (grad None) gets no momentum, state or weight decay."""
    live, held = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    held.requires_grad_(False)
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    try:
        opt = make([live, held], lr=0.1, weight_decay=0.1, **extra, **path)
    except (RuntimeError, TypeError):
        pytest.skip(f"this torch has no {path} {optimizer} on CPU")
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        live.sum().backward()
        opt.step()
    assert held.grad is None and held not in opt.state and torch.equal(held, torch.ones(4))
    assert not torch.equal(live, torch.ones(4))


def test_lp_ft_first_stage_keeps_the_pretrained_body_bit_identical(small_batches):
    train, val = small_batches
    backbone = lite0()
    G, f, r = backbone.num_groups, 2, 1
    body = set(range(f, G - r))
    before = _state(backbone)
    seen = {}

    def progress(step, steps):
        if step == 3:  # the last step of the first stage (round(0.5 * 6) = 3)
            seen["state"] = _state(backbone)
            seen["trainable"] = [any(p.requires_grad for p in _params(backbone, i)) for i in range(G)]

    cache = PrefixCache()
    config = TrainConfig(
        lr=0.05,
        freeze=f,
        reinit=r,
        schedule="lp-ft",
        stage_frac=0.5,
        weight_decay=0.01,
        steps=6,
        eval_every=3,
        batch_size=16,
        resolution=32,
        views=2,
    )
    result = train_protocol(backbone, train, val, config, progress=progress, cache=cache)
    mid, after = seen["state"], _state(backbone)
    # first stage: groups f..G-r-1 (parameters and BN running statistics) untouched; head moved
    assert _equal(_group_state(backbone, mid, body), _group_state(backbone, before, body))
    assert not _equal(_group_state(backbone, mid, {G}), _group_state(backbone, before, {G}))
    assert seen["trainable"] == [False] * (G - r) + [True] * r
    # after the stage every body group moves; the cached prefix 0..f-1 never does
    assert _equal(_group_state(backbone, after, set(range(f))), _group_state(backbone, before, set(range(f))))
    for i in body:
        assert not _equal(_group_state(backbone, after, {i}), _group_state(backbone, mid, {i})), i
    assert result.unfrozen == [(4, g) for g in range(G - r - 1, f - 1, -1)]
    assert json.loads(json.dumps(result.attrs()))["unfrozen"] == [[4, g] for g in range(G - r - 1, f - 1, -1)]
    # the cache served depth f only
    assert result.cached and [e.freeze for e in cache.entries()] == [f]


def _params(backbone, i):
    named = dict(backbone.model.named_parameters())
    return [named[n] for n in backbone.groups[i].params]


def test_gradual_unfreezes_top_down_at_the_stated_steps(small_batches):
    train, val = small_batches
    backbone = lite0()
    G, f, r, steps = backbone.num_groups, 1, 1, 12
    K = G - r - f
    before = _state(backbone)
    trainable, last_frozen = {}, {}

    def progress(step, _):
        trainable[step] = [i for i in range(G) if any(p.requires_grad for p in _params(backbone, i))]
        for i in range(f, G - r):
            if i not in trainable[step]:
                last_frozen[i] = _group_state(backbone, _state(backbone), {i})

    config = TrainConfig(
        lr=0.05,
        freeze=f,
        reinit=r,
        schedule="gradual",
        stage_frac=0.5,
        l2sp=0.01,
        steps=steps,
        eval_every=6,
        batch_size=8,
        resolution=32,
        views=2,
    )
    result = train_protocol(backbone, train, val, config, progress=progress, cache=PrefixCache())
    # K = 6 groups over round(0.5 * 12) = 6 steps: group G-r-k joins at step k + 1
    expected = [(k + 1, G - r - k) for k in range(1, K + 1)]
    assert result.unfrozen == expected == unfreeze_steps(steps, "gradual", 0.5, f, r, G)
    for step in range(1, steps + 1):
        depth = frozen_depth(step, steps, "gradual", 0.5, f, r, G)
        assert trainable[step] == list(range(depth, G)), step
    # a group waiting its turn is bit-identical to the pretrained one (no momentum, decay or L2-SP)
    for i, state in last_frozen.items():
        assert _equal(state, _group_state(backbone, before, {i})), i
    assert set(last_frozen) == set(range(f, G - r))


@pytest.mark.parametrize("schedule", ["lp-ft", "gradual"])
def test_no_cache_for_groups_that_train_at_any_point(small_batches, schedule):
    train, val = small_batches
    cache = PrefixCache()
    config = TrainConfig(
        lr=0.05, freeze=0, schedule=schedule, steps=4, eval_every=4, batch_size=8, resolution=32, views=2
    )
    result = train_protocol(lite0(), train, val, config, cache=cache)
    assert not result.cached and len(cache) == 0
    assert result.unfrozen  # the body was frozen at first: the cache still was not used


def test_one_stage_is_unchanged_and_degenerate_schedules_match_it(small_batches):
    train, val = small_batches
    G = lite0().num_groups
    base = dict(lr=0.05, freeze=2, reinit=1, steps=4, eval_every=2, batch_size=8, resolution=32, views=2, seed=3)
    plain = train_protocol(lite0(), train, val, TrainConfig(**base))
    explicit = train_protocol(lite0(), train, val, TrainConfig(**base, schedule="one-stage", stage_frac=0.7))
    assert plain.history == explicit.history and plain.train_loss == explicit.train_loss
    assert plain.unfrozen == [] and plain.attrs()["unfrozen"] == []
    # no first stage (stage_frac 0), or nothing pretrained to train (f = G - r): one-stage exactly
    no_stage = train_protocol(lite0(), train, val, TrainConfig(**base, schedule="lp-ft", stage_frac=0.0))
    assert no_stage.history == plain.history and no_stage.train_loss == plain.train_loss
    top = {**base, "freeze": G - 1}
    a = train_protocol(lite0(), train, val, TrainConfig(**top))
    b = train_protocol(lite0(), train, val, TrainConfig(**top, schedule="gradual"))
    assert a.history == b.history and a.train_loss == b.train_loss and b.unfrozen == []
