"""Built-in sources: shapes, labels, class names, class subsets and error messages."""

from __future__ import annotations

import time

import numpy as np
import pytest

from autotransfer.core.errors import UserError
from autotransfer.data import ImageDataset, list_builtins, load_dataset
from autotransfer.data import builtin as builtin_module
from autotransfer.data.builtin import FASHION_CLASSES

NAMES = {"fashion-mnist", "mnist5k", "animals", "elpv", "elpv4", "digits", "imagenet-photos"}


def _grey_rgb(ds: ImageDataset) -> bool:
    images = np.asarray(ds.images[:50])
    return bool((images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all())


def test_list_builtins_describes_every_source():
    infos = {info.name: info for info in list_builtins()}
    assert NAMES <= set(infos)
    for info in infos.values():
        assert info.installed, f"{info.name} should be installed in the test environment"
        assert info.install_hint and info.licence and info.description and info.package
        assert info.num_images > 0 and info.num_classes >= 2
    assert infos["elpv"].licence == "CC-BY-NC-SA-4.0"
    assert infos["animals"].install_hint == "pip install --no-deps animal-mnist"
    assert infos["fashion-mnist"].install_hint == "apt-get install dataset-fashion-mnist"
    assert infos["fashion-mnist"].image_size == (28, 28)
    assert infos["elpv"].image_size == (300, 300)
    assert infos["mnist5k"].flip is False and infos["digits"].flip is False


def test_fashion_mnist_full_load_and_in_process_cache():
    ds = load_dataset("builtin:fashion-mnist")
    assert ds.images.shape == (70000, 28, 28, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (70000,)
    assert ds.classes == FASHION_CLASSES and ds.classes[0] == "T-shirt/top"
    assert ds.class_counts().tolist() == [7000] * 10
    assert ds.flip is True and ds.skipped == 0
    assert _grey_rgb(ds)
    start = time.perf_counter()
    again = load_dataset("builtin:fashion-mnist")
    assert time.perf_counter() - start < 0.5  # raw arrays are cached in-process
    assert np.shares_memory(again.images, ds.images)
    assert again.fingerprint == ds.fingerprint
    again.labels[0] = 9  # each load owns its labels
    assert load_dataset("builtin:fashion-mnist").labels[0] == ds.labels[0]


def test_fashion_class_subset_reindexes_and_keeps_names():
    full = load_dataset("builtin:fashion-mnist")
    sub = load_dataset("builtin:fashion-mnist?classes=5-9")
    assert sub.classes == FASHION_CLASSES[5:]
    assert len(sub) == 35000 and sub.labels.min() == 0 and sub.labels.max() == 4
    assert sub.class_counts().tolist() == [7000] * 5
    kept = np.flatnonzero(full.labels >= 5)
    np.testing.assert_array_equal(sub.labels, full.labels[kept] - 5)
    for j in (0, 1, 1000, 34999):
        np.testing.assert_array_equal(sub.images[j], full.images[kept[j]])
    assert sub.fingerprint != full.fingerprint
    mixed = load_dataset("builtin:fashion-mnist?classes=0,2,4-6")
    assert mixed.classes == [FASHION_CLASSES[i] for i in (0, 2, 4, 5, 6)]
    assert sorted(set(mixed.labels.tolist())) == [0, 1, 2, 3, 4]
    by_name = load_dataset("builtin:fashion-mnist?classes=Bag,Sandal")
    assert by_name.classes == ["Sandal", "Bag"]


@pytest.mark.parametrize("selector", ["5-", "12", "9-5", "x", "", "1,,2", "-3"])
def test_bad_class_selector_is_named(selector):
    with pytest.raises(UserError) as err:
        load_dataset(f"builtin:digits?classes={selector}")
    assert f"class selector {selector!r}" in str(err.value)


def test_single_class_subset_is_refused():
    with pytest.raises(UserError, match="only one class"):
        load_dataset("builtin:digits?classes=3")
    ds = load_dataset("builtin:digits?classes=3", require_labels=False)
    assert ds.classes == ["3"]


def test_mnist5k():
    ds = load_dataset("builtin:mnist5k")
    assert ds.images.shape == (5000, 28, 28, 3)
    assert ds.class_counts().tolist() == [500] * 10
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.flip is False and _grey_rgb(ds)
    assert ds.images.max() == 255 and ds.images.min() == 0


def test_animals_read_from_package_pickles():
    ds = load_dataset("builtin:animals?classes=0-2")
    assert ds.classes == ["Bear", "Bird", "Cat"]
    assert ds.images.shape == (3000, 28, 28, 3)
    assert ds.class_counts().tolist() == [1000] * 3
    assert ds.flip is True
    full = load_dataset("builtin:animals")
    assert len(full) == 10000 and full.classes[-1] == "Zebra"


def test_digits_scaled_to_8_bit():
    ds = load_dataset("builtin:digits")
    assert ds.images.shape == (1797, 8, 8, 3)
    assert ds.images.max() == 255 and ds.flip is False
    assert len(ds.classes) == 10


def test_elpv_two_and_four_classes():
    two = load_dataset("builtin:elpv")
    assert two.images.shape == (2624, 300, 300, 3)
    assert two.classes == ["functional", "defective"]
    assert two.class_counts().tolist() == [1803, 821]  # p in {0, 1/3} vs {2/3, 1}
    assert any("functional" in note for note in two.notes)
    four = load_dataset("builtin:elpv4")
    assert four.class_counts().tolist() == [1508, 295, 106, 715]
    np.testing.assert_array_equal(two.labels, (four.labels >= 2).astype(np.int64))


def test_imagenet_photos_from_foolbox():
    ds = load_dataset("builtin:imagenet-photos")
    assert len(ds) == 20 and isinstance(ds.images, list)
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in ds.images)
    assert len(ds.classes) == 19  # class 609 appears twice
    assert ds.classes[ds.labels[0]] == "243"  # imagenet_00_243.jpg
    assert all(c.isdigit() for c in ds.classes)


def test_unknown_builtin_lists_known_names():
    with pytest.raises(UserError) as err:
        load_dataset("builtin:cifar-11")
    message = str(err.value)
    assert "'cifar-11'" in message
    for name in NAMES:
        assert name in message


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin_module, "_has_module", lambda name: False)
    with pytest.raises(UserError, match="pip install --no-deps animal-mnist"):
        load_dataset("builtin:animals")
    monkeypatch.setattr(builtin_module, "FASHION_MNIST_DIR", tmp_path / "nothing")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("builtin:fashion-mnist")
    infos = {info.name: info for info in list_builtins()}
    assert not infos["animals"].installed and not infos["fashion-mnist"].installed


def test_spec_options_subsample_and_unknown_option():
    ds = load_dataset("builtin:digits?classes=0-4&n=50&seed=3")
    assert len(ds) == 50 and ds.class_counts().tolist() == [10] * 5
    assert ds.spec == "builtin:digits?classes=0-4&n=50&seed=3"
    again = load_dataset("builtin:digits?classes=0-4&n=50&seed=3")
    np.testing.assert_array_equal(ds.images, again.images)
    with pytest.raises(UserError, match="unknown option 'size'"):
        load_dataset("builtin:digits?size=3")
    with pytest.raises(UserError, match="n='x'"):
        load_dataset("builtin:digits?n=x")


def test_official_split():
    train = load_dataset("builtin:fashion-mnist?split=train")
    test = load_dataset("builtin:fashion-mnist?split=test&classes=0-4")
    full = load_dataset("builtin:fashion-mnist")
    assert len(train) == 60000 and train.class_counts().tolist() == [6000] * 10
    assert len(test) == 5000 and test.classes == FASHION_CLASSES[:5]
    np.testing.assert_array_equal(train.images[-1], full.images[59999])
    infos = {info.name: info for info in list_builtins()}
    assert infos["fashion-mnist"].splits == ("train", "test")
    with pytest.raises(UserError, match="bad split 'dev'"):
        load_dataset("builtin:fashion-mnist?split=dev")
    with pytest.raises(UserError, match="offers: none"):
        load_dataset("builtin:digits?split=train")
