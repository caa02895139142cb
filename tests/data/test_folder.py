"""Folder and CSV sources: image modes, skipped files, decode cache and error messages."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from autotransfer.core.errors import UserError
from autotransfer.data import folder as folder_module
from autotransfer.data import load_dataset
from tests.data.conftest import write_mixed_tree, write_tiny_tree


def _by_shape(ds, shape):
    return [im for im in ds.images if im.shape == shape]


def test_mixed_modes_normalised_to_rgb_and_bad_files_skipped(tmp_path, private_cache):
    root = write_mixed_tree(tmp_path / "tree")
    ds = load_dataset(f"folder:{root}")
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 5 and ds.skipped == 2
    assert any("skipped 2" in note for note in ds.notes)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert isinstance(ds.images, list)  # sizes differ
    for image in ds.images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    grey = ds.images[0]  # cat/grey.png (sorted first)
    assert grey.shape == (12, 18, 3)
    np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.open(root / "cat/grey.png")))
    palette = ds.images[1]
    np.testing.assert_array_equal(palette, np.asarray(Image.open(root / "cat/palette.png").convert("RGB")))
    rgba = ds.images[2]
    assert rgba[0, 0].tolist() == [0, 0, 0]  # transparent -> black
    assert rgba[0, 1].tolist() == [200, 100, 50]  # opaque kept
    deep = ds.images[3]
    assert deep[0, 0].tolist() == [0, 0, 0]
    assert deep[0, 1].tolist() == [100, 100, 100]  # 16-bit 25700 -> 100
    assert deep[5, 5].tolist() == [255, 255, 255]
    assert ds.images[4].shape == (16, 12, 3)  # the JPEG


def test_plain_path_and_folder_prefix_agree(tmp_path, private_cache):
    root = write_tiny_tree(tmp_path / "t", {"a": 3, "b": 4, "c": 2})
    plain = load_dataset(str(root))
    prefixed = load_dataset(f"folder:{root}")
    assert plain.fingerprint == prefixed.fingerprint
    assert isinstance(plain.images, np.ndarray) and plain.images.shape == (9, 8, 8, 3)
    picked = load_dataset(f"folder:{root}?classes=c,a")
    assert picked.classes == ["a", "c"] and picked.labels.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(picked.images[3:], plain.images[7:])
    with pytest.raises(UserError, match="only one class"):
        load_dataset(f"folder:{root}?classes=1")
    alone = load_dataset(f"folder:{root}?classes=b", require_labels=False)
    assert alone.classes == ["b"] and len(alone) == 4
    with pytest.raises(UserError, match="'d'"):
        load_dataset(f"folder:{root}?classes=a,d")


def test_csv_manifest(tmp_path, private_cache):
    root = write_tiny_tree(tmp_path / "imgs", {"x": 2, "y": 3})
    manifest = tmp_path / "labels.csv"
    rows = ["path,label"]
    rows += [f"imgs/x/{i:03d}.png,10" for i in range(2)]
    rows += [f"imgs/y/{i:03d}.png,9" for i in range(3)]
    rows += ["imgs/missing.png,9"]
    manifest.write_text("\n".join(rows) + "\n")
    ds = load_dataset(str(manifest))
    assert ds.classes == ["9", "10"]  # numeric order
    assert ds.labels.tolist() == [1, 1, 0, 0, 0]
    assert ds.skipped == 1 and len(ds) == 5
    np.testing.assert_array_equal(ds.images[0], np.asarray(Image.open(root / "x/000.png")))
    unlabelled = tmp_path / "paths.csv"
    unlabelled.write_text("path\nimgs/x/000.png\nimgs/y/000.png\n")
    ds = load_dataset(f"folder:{unlabelled}", require_labels=False)
    assert ds.labels is None and ds.classes == [] and len(ds) == 2
    with pytest.raises(UserError, match="no 'label' column"):
        load_dataset(str(unlabelled))


def test_unlabelled_folder(tmp_path, private_cache):
    root = tmp_path / "loose"
    root.mkdir()
    for i in range(4):
        Image.fromarray(np.full((6, 6, 3), i * 10, np.uint8)).save(root / f"{i}.png")
    (root / "junk.txt").write_text("x")
    ds = load_dataset(str(root), require_labels=False)
    assert ds.labels is None and ds.classes == [] and len(ds) == 4 and ds.skipped == 1
    with pytest.raises(UserError) as err:
        load_dataset(str(root))
    assert str(root) in str(err.value) and "sub-folder" in str(err.value)


def test_bad_inputs_name_the_path(tmp_path, private_cache):
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as err:
        load_dataset(f"folder:{missing}")
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as err:
        load_dataset(str(empty))
    assert str(empty) in str(err.value) and "empty" in str(err.value)

    tree = write_tiny_tree(tmp_path / "t1", {"a": 2, "b": 2})
    (tree / "c").mkdir()
    with pytest.raises(UserError) as err:
        load_dataset(str(tree))
    assert str(tree / "c") in str(err.value) and "no images" in str(err.value)

    tree2 = write_tiny_tree(tmp_path / "t2", {"a": 2, "b": 2})
    (tree2 / "c").mkdir()
    (tree2 / "c" / "readme.txt").write_text("hello")
    with pytest.raises(UserError) as err:
        load_dataset(str(tree2))
    assert str(tree2 / "c") in str(err.value) and "no readable images" in str(err.value)

    single = write_tiny_tree(tmp_path / "t3", {"only": 3})
    with pytest.raises(UserError) as err:
        load_dataset(str(single))
    assert str(single) in str(err.value) and "one class" in str(err.value)

    a_file = tmp_path / "t1" / "a" / "000.png"
    with pytest.raises(UserError) as err:
        load_dataset(str(a_file))
    assert str(a_file) in str(err.value)


def test_decode_cache_skips_pillow_on_second_load(tmp_path, private_cache, monkeypatch):
    root = write_tiny_tree(tmp_path / "t", {"a": 3, "b": 3})
    calls = []
    real = folder_module.decode_bytes

    def counting(data, **options):
        calls.append(len(data))
        return real(data, **options)

    monkeypatch.setattr(folder_module, "decode_bytes", counting)
    first = load_dataset(str(root))
    assert len(calls) == 6
    assert list((private_cache / "decoded").glob("*/*.npy"))
    calls.clear()
    second = load_dataset(str(root))
    assert calls == []
    np.testing.assert_array_equal(first.images, second.images)
    assert first.fingerprint == second.fingerprint

    # a new mtime with the same bytes is still a hit; changed bytes are decoded again
    target = root / "a" / "000.png"
    os.utime(target, (1, 1))
    load_dataset(str(root))
    assert calls == []
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(target)
    third = load_dataset(str(root))
    assert len(calls) == 1
    assert third.images[0].tolist() == np.full((8, 8, 3), 7).tolist()

    calls.clear()
    load_dataset(str(root), cache=False)
    assert len(calls) == 6


def test_corrupt_files_are_remembered(tmp_path, private_cache, monkeypatch):
    root = write_mixed_tree(tmp_path / "tree")
    load_dataset(str(root))
    calls = []
    monkeypatch.setattr(folder_module, "decode_bytes", lambda data, **_: calls.append(1))
    again = load_dataset(str(root))
    assert calls == [] and again.skipped == 2 and len(again) == 5


# -- class order: natural sort, as timm's ImageFolder reader -------------------------------------


def test_class_folders_sort_naturally_as_timm_does(tmp_path, private_cache):
    from timm.data.readers.reader_image_folder import find_images_and_targets

    names = ["10", "2", "1", "class10", "Class2", "class1", "b", "A"]
    rng = np.random.default_rng(0)
    for name in names:
        (tmp_path / "tree" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "tree" / name / "x.png")
    ds = load_dataset(f"folder:{tmp_path / 'tree'}")
    assert ds.classes == ["1", "2", "10", "A", "b", "class1", "Class2", "class10"]
    _, class_to_idx = find_images_and_targets(str(tmp_path / "tree"))
    assert ds.classes == sorted(class_to_idx, key=class_to_idx.get)  # timm gives every class the same index
    # each image keeps its folder's label
    for image_label, name in zip(ds.labels.tolist(), ds.classes):
        assert ds.classes[image_label] == name


def test_manifest_labels_sort_by_the_same_rule(tmp_path, private_cache):
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i, label in enumerate(["10", "2", "1", "x3", "x20"]):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(str(tmp_path / "m.csv"))
    assert ds.classes == ["1", "2", "10", "x3", "x20"]
    assert [ds.classes[i] for i in ds.labels] == ["10", "2", "1", "x3", "x20"]
