"""The trial loop on real data: what changes under freeze/reinit, learning, early stop, divergence, L2-SP."""

from __future__ import annotations

import json

import pytest
import torch

from autotransfer.core.errors import UserError
from autotransfer.train import DivergedError, PrefixCache, TrainConfig, train_protocol

from .conftest import lite0


def _state(backbone):
    """Detached copies of parameters and buffers, by state-dict name."""
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def _group_of(backbone):
    """state-dict name -> depth group index (head -> G), buffers included."""
    out = {}
    for i, group in enumerate(backbone.groups):
        for module in group.modules:
            for name in backbone.model.get_submodule(module).state_dict():
                out[f"{module}.{name}"] = i
    for name in backbone.model.state_dict():
        out.setdefault(name, backbone.num_groups)
    return out


def _changed_groups(backbone, before):
    after = backbone.model.state_dict()
    groups = _group_of(backbone)
    changed = set()
    for name, value in before.items():
        if value.dtype.is_floating_point and not torch.equal(value, after[name]):
            changed.add(groups[name])
    return changed


@pytest.mark.parametrize("depth, cache_prefix", [("all", True), ("half", True), ("half", False)])
def test_only_groups_from_freeze_depth_and_head_change(digits_batches, depth, cache_prefix):
    train, val = digits_batches
    backbone = lite0()
    G = backbone.num_groups
    f = G if depth == "all" else G // 2
    before = _state(backbone)
    config = TrainConfig(
        lr=0.02, freeze=f, steps=3, eval_every=3, batch_size=16, resolution=32, views=2, cache_prefix=cache_prefix
    )
    result = train_protocol(backbone, train, val, config)
    assert result.cached == cache_prefix
    # every trainable group (weights or BN statistics) and the head moved; nothing below f did
    assert _changed_groups(backbone, before) == set(range(f, G + 1))


def test_reinit_replaces_last_groups_before_training(small_batches):
    train, val = small_batches
    G = lite0().num_groups
    results = {}
    for r in (0, 2):
        backbone = lite0()
        before = _state(backbone)
        # a vanishing lr: whatever moves far from the pretrained weights was re-initialised
        config = TrainConfig(
            lr=1e-12,
            freeze=G - 2,
            reinit=r,
            steps=1,
            eval_every=1,
            batch_size=8,
            resolution=32,
            bn_mode="frozen",
            augment=False,
        )
        train_protocol(backbone, train, val, config)
        groups = _group_of(backbone)
        after = backbone.model.state_dict()
        results[r] = {
            g: max(
                float((after[n] - before[n]).abs().max())
                for n in before
                if groups[n] == g and before[n].dtype.is_floating_point and before[n].dim() > 1
            )
            for g in range(G)
        }
    for g in range(G):
        assert results[0][g] < 1e-6
        assert (results[2][g] > 1e-2) == (g >= G - 2)


def test_short_run_learns_digits_well_above_chance(digits_batches):
    train, val = digits_batches
    config = TrainConfig(lr=0.05, freeze=8, steps=30, eval_every=10, batch_size=32, resolution=32, views=4)
    result = train_protocol(lite0(), train, val, config)
    assert [s for s, _ in result.history] == [10, 20, 30]
    assert result.final_score > 0.5  # 10 classes: chance is 0.1
    assert result.best_score == max(v for _, v in result.history)
    assert result.images_per_s > 0 and result.wall_time_s > 0 and result.peak_memory_bytes > 0
    attrs = result.attrs()
    assert json.loads(json.dumps(attrs))["steps_done"] == 30
    assert result.model is result.backbone.model


def test_report_true_stops_early(small_batches):
    train, val = small_batches
    calls = []

    def report(step, value):
        calls.append((step, value))
        return step >= 4

    config = TrainConfig(lr=0.02, freeze=8, steps=10, eval_every=2, batch_size=8, resolution=32, views=2)
    result = train_protocol(lite0(), train, val, config, report=report)
    assert result.stopped_early and result.steps_done == 4
    assert [s for s, _ in calls] == [2, 4] and result.history == calls
    finished = train_protocol(lite0(), train, val, config, report=lambda s, v: False)
    assert not finished.stopped_early and [s for s, _ in finished.history] == [2, 4, 6, 8, 10]


def test_huge_lr_raises_diverged_with_step(small_batches):
    train, val = small_batches
    config = TrainConfig(lr=1e6, freeze=0, steps=20, eval_every=20, batch_size=8, resolution=32, bn_mode="frozen")
    with pytest.raises(DivergedError) as err:
        train_protocol(lite0(), train, val, config)
    assert 1 <= err.value.step <= 20
    assert not torch.isfinite(torch.tensor(err.value.loss))
    assert f"step {err.value.step}" in str(err.value)


def test_l2sp_pulls_weights_toward_pretrained(small_batches):
    train, val = small_batches
    distances = {}
    cache = PrefixCache()
    for alpha in (0.0, 5.0):
        backbone = lite0()
        G = backbone.num_groups
        names = [n for g in backbone.groups[G - 2 :] for n in g.params]
        start = {n: p.detach().clone() for n, p in backbone.model.named_parameters() if n in names}
        config = TrainConfig(
            lr=0.05, freeze=G - 2, l2sp=alpha, steps=8, eval_every=8, batch_size=16, resolution=32, views=2, seed=1
        )
        train_protocol(backbone, train, val, config, cache=cache)
        params = dict(backbone.model.named_parameters())
        distances[alpha] = sum(float((params[n].detach() - start[n]).pow(2).sum()) for n in names) ** 0.5
    assert 0 < distances[5.0] < 0.7 * distances[0.0]


def test_same_seed_same_result_and_balanced_metric(small_batches):
    train, val = small_batches
    cache = PrefixCache()
    config = TrainConfig(lr=0.05, freeze=8, steps=6, eval_every=3, batch_size=16, resolution=32, views=2, seed=5)
    a = train_protocol(lite0(), train, val, config, cache=cache, metric="balanced_accuracy")
    b = train_protocol(lite0(), train, val, config, cache=cache, metric="balanced_accuracy")
    assert b.cache_hit and not a.cache_hit
    assert a.history == b.history and a.metric == "balanced_accuracy"


def test_mismatched_resolution_and_depth_are_user_errors(small_batches):
    train, val = small_batches
    with pytest.raises(UserError, match="resolution is 64.*32"):
        train_protocol(lite0(), train, val, TrainConfig(resolution=64, steps=1))
    with pytest.raises(UserError, match="freeze.*9"):
        train_protocol(lite0(), train, val, TrainConfig(resolution=32, freeze=9, steps=1))
