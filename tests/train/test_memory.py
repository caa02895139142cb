"""Out-of-memory on CPU, injected: accumulation keeps the protocol, the retry shrinks the
micro-batch and releases the failed attempt's memory, and the exception type works on any torch."""

from __future__ import annotations

import weakref

import pytest
import torch

from autotransfer.train import OOM_ERRORS, OutOfMemory, TrainConfig, train_protocol, with_oom_retry

from .conftest import lite0, out_of_memory_above


def _config(**kw) -> TrainConfig:
    # BN in eval mode everywhere (bn frozen), no prefix cache: a micro-batch changes nothing but
    # the order of float additions
    base = dict(
        lr=0.02,
        freeze=0,
        steps=4,
        eval_every=4,
        batch_size=16,
        resolution=32,
        bn_mode="frozen",
        cache_prefix=False,
        device="cpu",
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def _weights(backbone) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in backbone.model.parameters()])


def test_accumulation_over_micro_batches_gives_the_full_batch_result(small_batches):
    train, val = small_batches
    full, split = lite0(), lite0()
    a = train_protocol(full, train, val, _config())
    b = train_protocol(split, train, val, _config(micro_batch=5))  # 16 = 5 + 5 + 5 + 1
    torch.testing.assert_close(_weights(full), _weights(split), rtol=1e-4, atol=1e-5)
    assert a.final_score == b.final_score
    assert a.train_loss[-1][1] == pytest.approx(b.train_loss[-1][1], rel=1e-4)


def test_an_injected_oom_retries_at_half_the_micro_batch_and_releases_the_failed_attempt(small_batches):
    train, val = small_batches
    built: list[weakref.ref] = []
    shrinks: list[tuple[int, str]] = []

    def run(micro):
        for ref in built:  # every earlier attempt's model is gone before the next one is built
            assert ref() is None
        backbone = out_of_memory_above(lite0(), 4)
        built.append(weakref.ref(backbone.model))
        train_protocol(backbone, train, val, _config(micro_batch=micro))
        return backbone

    backbone, micro = with_oom_retry(run, None, 16, on_shrink=lambda m, e: shrinks.append((m, e)))
    assert micro == 4 and [m for m, _ in shrinks] == [8, 4]
    assert "OutOfMemoryError" in shrinks[0][1] and "injected" in shrinks[0][1]
    # the retry trained the same protocol: equal to a direct run at micro-batch 4
    direct = lite0()
    train_protocol(direct, train, val, _config(micro_batch=4))
    torch.testing.assert_close(_weights(backbone), _weights(direct), rtol=1e-5, atol=1e-6)
    # a model that fits nothing stops with one line
    with pytest.raises(OutOfMemory, match="one image per micro-batch"):
        with_oom_retry(lambda m: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")), 2, 16)


def test_the_oom_type_exists_on_a_torch_without_torch_OutOfMemoryError():
    from types import SimpleNamespace

    from autotransfer.train.memory import oom_error_types

    assert torch.cuda.OutOfMemoryError in OOM_ERRORS
    older = SimpleNamespace(cuda=SimpleNamespace(OutOfMemoryError=torch.cuda.OutOfMemoryError))  # torch 2.2
    assert oom_error_types(older) == (torch.cuda.OutOfMemoryError,)


def test_bf16_autocast_is_on_only_where_the_gpu_has_native_bf16(monkeypatch):
    from autotransfer.train.config import default_amp

    assert default_amp(torch.device("cpu")) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a pre-Ampere GPU
    assert default_amp(torch.device("cuda")) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert default_amp(torch.device("cuda")) is True
    # recent torch counts emulated bf16 as supported unless asked not to: a pre-Ampere GPU answers
    # True by default and False for native support only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert default_amp(torch.device("cuda")) is False
    # an older torch without the argument reports native support only

    def old_torch(*args, **kwargs):
        if kwargs:
            raise TypeError("is_bf16_supported() got an unexpected keyword argument 'including_emulation'")
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_torch)
    assert default_amp(torch.device("cuda")) is True


def test_reinit_seeds_only_the_cpu_generator_and_restores_it(monkeypatch):
    from autotransfer.backbones import reinit

    def no_cuda_reseed(*args, **kwargs):
        raise AssertionError("reinit reseeded the CUDA generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", no_cuda_reseed)
    monkeypatch.setattr(torch.cuda, "manual_seed", no_cuda_reseed)
    a, b = lite0(), lite0()
    before = torch.get_rng_state()
    reinit(a, 2, seed=5)
    reinit(b, 2, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(_weights(a), _weights(b))  # seeded: the same fresh weights
