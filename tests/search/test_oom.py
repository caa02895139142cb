"""Memory across trials, on CPU with an injected out-of-memory: the micro-batch found by one trial
is kept for the next ones, and nothing of a finished, failed or pruned trial is alive when the next
trial builds its model."""

from __future__ import annotations

import math
import weakref
from dataclasses import replace

from optuna.trial import TrialState

from autotransfer.core.protocol import Protocol, ProtocolSpace
from autotransfer.core.schema import SOURCE_ATTR
from autotransfer.prior import linear_probe_protocol, recommended_protocol
from autotransfer.search.run import build_runner, run_search
from autotransfer.search.storage import open_storage
from autotransfer.search.study import create_study, open_study
from tests.search.conftest import prepared_tiny
from tests.train.conftest import out_of_memory_above


def test_oom_micro_batch_is_remembered_and_dead_trials_free_their_models(tiny_settings, storage_url):
    settings, prepared = prepared_tiny(replace(tiny_settings, trials=3, prune=True))
    queued = [
        (recommended_protocol(), {SOURCE_ATTR: "prior"}),
        (Protocol(log10_elr=math.log10(1e6)), {SOURCE_ATTR: "diverges"}),  # fails: NaN loss
        (linear_probe_protocol(), {}),  # a protocol as if sampled
    ]
    store = open_storage(storage_url)
    create_study("oom", store, settings, profile=None, prior=None, space=ProtocolSpace(), enqueue=queued)
    study = open_study("oom", store, settings)
    runner = build_runner(study, settings, prepared)
    made = runner.make_backbone
    alive: list[weakref.ref] = []
    leaks: list[int] = []

    def make_backbone():
        leaks.append(sum(ref() is not None for ref in alive))  # earlier models still alive now
        backbone = out_of_memory_above(made(), 4)
        alive.append(weakref.ref(backbone.model))
        return backbone

    runner.make_backbone = make_backbone
    run_search(study, runner, 3)
    trials = study.trials
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.FAIL]
    assert any(t.state == TrialState.PRUNED for t in trials[2:])  # a failed trial does not count: more ran
    # the first trial ran out of memory at 16 and 8 images, then trained with accumulation over 4
    assert trials[0].user_attrs["micro_batch"] == 4 and "injected" in trials[0].user_attrs["oom"]
    assert runner.micro_batch == 4
    # later trials started at the remembered micro-batch: no more out-of-memory
    assert all("oom" not in t.user_attrs for t in trials[1:])
    assert "diverged" in trials[1].user_attrs["fail_reason"]
    # every model built (3 attempts of trial 0, then one per trial), the pruned and the failed
    # trials' included, found all earlier ones freed
    assert len(leaks) == 2 + len(trials) and leaks == [0] * len(leaks)
