"""DeviceBatches: shapes, normalisation, crops, flips, determinism and epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autotransfer.data import DeviceBatches, load_dataset, to_array

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def animals():
    ds = load_dataset("builtin:animals?classes=0-3&n=40")
    return to_array(ds, 32, cache=False), ds.labels


def _batches(animals, **kwargs):
    images, labels = animals
    options = dict(device="cpu", out_size=32, mean=MEAN, std=STD, flip=True)
    options.update(kwargs)
    return DeviceBatches(images, labels, **options)


def _bounds():
    low = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    return low, high


def test_tensors_on_device(animals):
    db = _batches(animals)
    assert len(db) == 40
    assert db.images.shape == (40, 3, 32, 32) and db.images.dtype == torch.uint8
    assert db.labels.dtype == torch.int64 and db.labels.shape == (40,)
    np.testing.assert_array_equal(db.images[3].permute(1, 2, 0).numpy(), animals[0][3])


def test_augment_shape_and_range(animals):
    db = _batches(animals, out_size=24)
    g = torch.Generator().manual_seed(0)
    x = db.augment(torch.arange(16), g)
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.float32
    low, high = _bounds()
    assert bool((x >= low - 1e-4).all() and (x <= high + 1e-4).all())
    assert float(x.std()) > 0.1


def test_plain_is_exact_normalisation(animals):
    db = _batches(animals)
    x = db.plain(torch.tensor([0, 5]))
    raw = animals[0][[0, 5]].astype(np.float32) / 255
    expected = (raw - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("out_size", [32, 48])
def test_full_crop_without_flip_equals_plain(animals, out_size):
    db = _batches(animals, flip=False, scale=(1.0, 1.0), out_size=out_size)
    idx = torch.arange(12)
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(db.augment(idx, g), db.plain(idx), atol=1e-4, rtol=0)


def test_flip_mirrors_some_images(animals):
    db = _batches(animals, flip=True, scale=(1.0, 1.0))
    idx = torch.arange(40)
    x = db.augment(idx, torch.Generator().manual_seed(0))
    plain = db.plain(idx)
    same = (x - plain).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirrored = (x - plain.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert bool((same | mirrored).all())
    assert 5 < int(mirrored.sum()) < 35


def test_crops_respect_scale_and_ratio(animals):
    db = _batches(animals, scale=(0.3, 0.6), ratio=(0.5, 2.0))
    theta = db.crop_params(2000, torch.Generator().manual_seed(1))
    width, height = theta[:, 0, 0].abs(), theta[:, 1, 1]
    area, aspect = width * height, width / height
    assert bool((area >= 0.3 - 1e-5).all() and (area <= 0.6 + 1e-5).all())
    assert bool((aspect >= 0.5 - 1e-5).all() and (aspect <= 2.0 + 1e-5).all())
    # crop boxes stay inside the image: |centre| + half-size <= 1
    assert bool((theta[:, 0, 2].abs() + width <= 1 + 1e-5).all())
    assert bool((theta[:, 1, 2].abs() + height <= 1 + 1e-5).all())
    grid = db.sampling_grid(theta[:8])
    reference = F.affine_grid(theta[:8], (8, 3, 32, 32), align_corners=False)
    torch.testing.assert_close(grid, reference, atol=1e-6, rtol=0)


def test_seeded_generator_is_deterministic(animals):
    idx = torch.arange(10)
    a = _batches(animals).augment(idx, torch.Generator().manual_seed(7))
    b = _batches(animals).augment(idx, torch.Generator().manual_seed(7))
    c = _batches(animals).augment(idx, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


def test_epoch_sampler_walks_epochs():
    from autotransfer.data.device import EpochSampler

    sampler = EpochSampler(40, torch.Generator().manual_seed(0), "cpu")
    draws = [sampler.next(16) for _ in range(5)]  # 80 = two epochs
    drawn = torch.cat([idx for idx, _ in draws])
    assert drawn.dtype == torch.int64
    assert sorted(drawn[:40].tolist()) == list(range(40))
    assert sorted(drawn[40:].tolist()) == list(range(40))
    assert sampler.epoch == 1
    assert draws[2][1] == [(0, 8), (1, 8)]  # the batch straddling the epoch boundary
    again = EpochSampler(40, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(drawn, torch.cat([again.next(16)[0] for _ in range(5)]))
    assert sampler.next(100)[0].shape == (100,)
    with pytest.raises(ValueError, match="batch_size"):
        sampler.next(0)


def test_eval_batches_in_order(animals):
    db = _batches(animals)
    seen_x, seen_y = [], []
    for x, y in db.eval_batches(16):
        assert x.shape[1:] == (3, 32, 32)
        seen_x.append(x)
        seen_y.append(y)
    assert [len(y) for y in seen_y] == [16, 16, 8]
    assert torch.equal(torch.cat(seen_y), db.labels)
    torch.testing.assert_close(torch.cat(seen_x), db.plain(torch.arange(40)))
    unlabelled = DeviceBatches(animals[0][:5], None, device="cpu", out_size=16, mean=MEAN, std=STD, flip=False)
    assert [y for _, y in unlabelled.eval_batches(4)] == [None, None]


def test_channels_last_output(animals):
    db = _batches(animals, channels_last=True)
    x = db.augment(torch.arange(4), torch.Generator().manual_seed(0))
    assert x.is_contiguous(memory_format=torch.channels_last)
    flat = _batches(animals).augment(torch.arange(4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, flat)


@pytest.mark.parametrize("out_size", [32, 24])
def test_channels_last_storage_gives_the_same_batches_in_its_layout(animals, out_size):
    """Stored as the (N, H, W, 3) upload (no NCHW copy), batches equal the NCHW store's bit for
    bit and come out channels_last, so the trial step converts nothing."""
    flat = _batches(animals, out_size=out_size)
    stored = _batches(animals, out_size=out_size, channels_last=True)
    assert stored.images.is_contiguous(memory_format=torch.channels_last)
    assert stored.images.untyped_storage().nbytes() == stored.images.numel()  # one uint8 copy
    idx = torch.tensor([7, 0, 3, 3, 12])
    for make in (lambda db: db.augment(idx, torch.Generator().manual_seed(4)), lambda db: db.plain(idx)):
        x, y = make(stored), make(flat)
        assert x.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
        assert torch.equal(x, y)
        assert x.contiguous(memory_format=torch.channels_last) is x


def test_fingerprint_is_kept_for_the_cache_key(animals):
    assert _batches(animals).fingerprint is None
    assert _batches(animals, fingerprint="abc").fingerprint == "abc"


def test_bad_arguments(animals):
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(
            animals[0].astype(np.float32),
            None,
            device="cpu",
            out_size=8,
            mean=MEAN,
            std=STD,
            flip=False,
        )
    with pytest.raises(ValueError, match="labels"):
        DeviceBatches(animals[0], animals[1][:3], device="cpu", out_size=8, mean=MEAN, std=STD, flip=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_generator_must_match(animals):
    db = _batches(animals, device="cuda")
    with pytest.raises(ValueError, match="generator must live"):
        db.augment(torch.arange(4, device="cuda"), torch.Generator().manual_seed(0))
    x = db.augment(torch.arange(4, device="cuda"), torch.Generator(device="cuda").manual_seed(0))
    assert x.is_cuda and x.shape == (4, 3, 32, 32)
