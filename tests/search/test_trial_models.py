"""The best trials' own models kept on disk (``search.trial_models``) for a hand-back without a retrain."""

from __future__ import annotations

import torch

from autotransfer.search.trial_models import TrialModels, settled_of_history


def _model(value: float) -> torch.nn.Module:
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(value)
    return m


class _Backbone:
    def __init__(self) -> None:
        self.model = torch.nn.Linear(3, 2)


def test_keeps_the_top_k_and_deletes_what_falls_out(tmp_path):
    keep = TrialModels(tmp_path / "t", keep=2)
    assert keep.offer(0, 0.5, _model(0.0))
    assert keep.offer(1, 0.7, _model(1.0))
    assert not keep.offer(2, 0.4, _model(2.0))  # below both: not written
    assert not keep.has(2)
    assert keep.offer(3, 0.9, _model(3.0))  # trial 0 falls out
    assert not keep.has(0) and keep.has(1) and keep.has(3)
    loaded = keep.load(3, _Backbone)
    assert loaded is not None and torch.all(loaded.model.weight == 3.0) and not loaded.model.training
    assert keep.load(0, _Backbone) is None  # not kept: the caller re-creates it


def test_a_torn_or_mismatched_file_reads_as_not_kept(tmp_path):
    keep = TrialModels(tmp_path / "t", keep=2)
    keep.offer(5, 0.5, _model(1.0))
    keep.path(5).write_bytes(b"not a safetensors file")
    assert keep.load(5, _Backbone) is None
    keep.offer(6, 0.6, torch.nn.Linear(4, 2))  # another shape than the backbone's
    assert keep.load(6, _Backbone) is None


def test_clear_removes_the_folder(tmp_path):
    keep = TrialModels(tmp_path / "t", keep=2)
    keep.offer(0, 0.5, _model(0.0))
    keep.clear()
    assert not (tmp_path / "t").exists()


def test_settled_of_history():
    assert settled_of_history([(1, 0.1), (2, 0.5), (3, 0.6), (4, 0.7)]) == (0.5 + 0.6 + 0.7) / 3
    assert settled_of_history([]) == float("-inf")
