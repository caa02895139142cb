"""Folder datasets with symbolic links, corrupt files and CSV manifests that point elsewhere:
each file counted once, nothing read from outside the dataset unless asked, every skip told."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from autotransfer.core.errors import UserError
from autotransfer.data import load_dataset, skipped_summary, stratified_subsample
from tests.data.conftest import write_tiny_tree


def _reasons(ds) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path, reason in ds.skipped_files:
        out.setdefault(reason, []).append(path)
    return out


def test_link_to_the_parent_is_a_loop_not_18000_images(tmp_path, private_cache):
    root = write_tiny_tree(tmp_path / "t", {"class_a": 30, "class_b": 30})
    os.symlink("..", root / "class_a" / "up")
    ds = load_dataset(f"folder:{root}")
    assert len(ds) == 60
    assert ds.class_counts().tolist() == [30, 30]
    assert _reasons(ds) == {"link-loop": ["class_a/up"]}
    assert ds.skipped == 1
    assert any("skipped 1 file(s)" in n and "class_a/up" in n and "loop" in n for n in ds.notes)


def test_links_out_of_the_root_are_skipped_unless_allowed(tmp_path, private_cache):
    root = write_tiny_tree(tmp_path / "t", {"a": 3, "b": 3})
    elsewhere = write_tiny_tree(tmp_path / "elsewhere", {"x": 4})
    os.symlink(elsewhere / "x", root / "a" / "more")  # a folder outside
    os.symlink(elsewhere / "x" / "000.png", root / "b" / "one.png")  # a file outside
    os.symlink(elsewhere / "x", root / "c")  # a whole class outside
    ds = load_dataset(f"folder:{root}")
    assert ds.classes == ["a", "b"] and len(ds) == 6
    assert sorted(_reasons(ds)["link-outside"]) == ["a/more", "b/one.png", "c"]
    assert any("links leading out of the dataset folder" in n for n in ds.notes)

    allowed = load_dataset(f"folder:{root}?allow_outside=1")
    # class c holds the 4 outside images; a/more would be the same 4 and b/one.png one of
    # them: each file counts once, in the class folder that holds it
    assert allowed.classes == ["a", "b", "c"]
    assert allowed.class_counts().tolist() == [3, 3, 4]
    assert sorted(_reasons(allowed)["link-duplicate"]) == ["a/more", "b/one.png"]
    with pytest.raises(UserError, match="allow_outside"):
        load_dataset(f"folder:{root}?allow_outside=maybe")


def test_links_inside_the_root_count_each_file_once(tmp_path, private_cache):
    root = write_tiny_tree(tmp_path / "t", {"a": 3, "b": 3})
    os.symlink("../b", root / "a" / "b_again")  # a folder already counted
    os.symlink("../b/000.png", root / "a" / "stolen.png")  # another class's file
    os.symlink("nowhere.png", root / "a" / "dangling.png")
    os.symlink("a", root / "a_alias")  # a class folder twice
    ds = load_dataset(f"folder:{root}")
    assert ds.classes == ["a", "b"]
    assert ds.class_counts().tolist() == [3, 3]  # b's image stays under b
    reasons = _reasons(ds)
    assert sorted(reasons) == ["link-broken", "link-duplicate"]
    assert sorted(reasons["link-duplicate"]) == ["a/b_again", "a/stolen.png", "a_alias"]
    assert reasons["link-broken"] == ["a/dangling.png"]
    # a link to a file that nothing else reaches is an ordinary image
    hidden = root / ".store"
    hidden.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(hidden / "z.png")
    os.symlink("../.store/z.png", root / "b" / "z.png")
    assert load_dataset(f"folder:{root}").class_counts().tolist() == [3, 4]


def _corrupt_tree(root):
    write_tiny_tree(root, {"a": 5, "b": 5}, size=16)
    jpeg = root / "a" / "full.jpg"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(jpeg, quality=90)
    (root / "a" / "truncated.jpg").write_bytes(jpeg.read_bytes()[:40])
    jpeg.unlink()
    (root / "a" / "text.png").write_text("not an image at all\n")
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "half.png").write_bytes((root / "b" / "000.png").read_bytes()[:30])
    (root / "b" / "notes.txt").write_text("x")
    (root / "b" / "zero.jpg").write_bytes(b"")
    return root


def test_corrupt_files_are_listed_with_names(tmp_path, private_cache):
    root = _corrupt_tree(tmp_path / "t")
    ds = load_dataset(f"folder:{root}")
    assert len(ds) == 10 and ds.skipped == 6
    summary = skipped_summary(ds)
    assert summary["count"] == 6
    assert summary["reasons"] == {"unreadable": 6}
    assert summary["first"][:3] == ["a/empty.png", "a/text.png", "a/truncated.jpg"]
    assert len(summary["first"]) == 5
    note = next(n for n in ds.notes if n.startswith("skipped 6 file(s)"))
    assert "a/empty.png, a/text.png, a/truncated.jpg, ..." in note
    # subsamples and splits keep the record
    sub = stratified_subsample(ds, 6, seed=0)
    assert skipped_summary(sub) == summary
    assert skipped_summary(load_dataset("builtin:digits")) == {"count": 0, "first": [], "reasons": {}}


def test_manifest_paths_stay_inside_its_folder(tmp_path, private_cache):
    data = tmp_path / "data"
    write_tiny_tree(data / "imgs", {"x": 2, "y": 2})
    secret = write_tiny_tree(tmp_path / "private", {"s": 1})
    manifest = data / "labels.csv"
    good = ["path,label", "imgs/x/000.png,x", "imgs/x/001.png,x", "imgs/y/000.png,y", "imgs/y/001.png,y"]

    manifest.write_text("\n".join(good + ["imgs/y/gone.png,y"]) + "\n")
    ds = load_dataset(str(manifest))
    assert len(ds) == 4
    assert ds.skipped_files == [("imgs/y/gone.png", "missing")]
    assert any("listed in" in n and "imgs/y/gone.png" in n and "missing" in n for n in ds.notes)

    for bad in ("../private/s/000.png", "/etc/passwd", f"{secret}/s/000.png", "imgs/../../private/s/000.png"):
        manifest.write_text("\n".join(good + [f"{bad},y"]) + "\n")
        with pytest.raises(UserError) as err:
            load_dataset(str(manifest))
        message = str(err.value)
        assert "line 6" in message and "allow_outside=1" in message and bad in message

    os.symlink(secret / "s" / "000.png", data / "imgs" / "link.png")  # a link that leads out
    manifest.write_text("\n".join(good + ["imgs/link.png,y"]) + "\n")
    with pytest.raises(UserError, match="outside"):
        load_dataset(str(manifest))

    manifest.write_text("\n".join(good + ["../private/s/000.png,y", "/etc/passwd,y"]) + "\n")
    allowed = load_dataset(f"{manifest}?allow_outside=1")
    assert len(allowed) == 5  # the outside image is read; /etc/passwd is no image
    assert allowed.skipped_files == [("/etc/passwd", "unreadable")]
