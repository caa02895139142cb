"""Pruning in a real tiny study: sampled trials are pruned on successive-halving rungs, enqueued
candidates (the prior's protocols) run to the full budget but still stand on the rungs."""
from __future__ import annotations

from dataclasses import replace

from optuna.trial import TrialState

from autotransfer.prior import linear_probe_protocol, recommended_protocol
from autotransfer.search.job import build_runner, run_search
from autotransfer.search.protocol import ProtocolSpace
from autotransfer.search.storage import open_storage
from autotransfer.search.study import SOURCE_ATTR, create_study, load_study, make_pruner, make_sampler
from tests.search.conftest import prepared_tiny


def test_enqueued_candidates_run_to_the_full_budget_while_sampled_trials_are_pruned(tiny_settings, storage_url):
    settings = replace(tiny_settings, trials=3, prune=True)
    settings, prepared = prepared_tiny(settings)
    good = recommended_protocol()
    bad = linear_probe_protocol()  # at 16 px the frozen features of digits stay near chance in 12 steps
    queued = [
        (good, {SOURCE_ATTR: "prior"}),
        (bad, {SOURCE_ATTR: "linear-probe"}),  # an enqueued candidate
        (bad, {}),  # the same protocol as if the sampler had proposed it
    ]
    store = open_storage(storage_url)
    create_study("pruning", store, settings, profile=None, prior=None, space=ProtocolSpace(), enqueue=queued)
    study = load_study("pruning", store, sampler=make_sampler(settings.seed), pruner=make_pruner(settings))
    run_search(study, build_runner(study, settings, prepared), 3)

    first, candidate, sampled = study.trials[:3]  # in trial-number order
    rung = settings.eval_every  # the first successive-halving rung
    # the premise: at the first rung the bad protocol is behind the good one, so a sampled copy loses there
    assert first.intermediate_values[rung] > candidate.intermediate_values[rung]
    assert sampled.state == TrialState.PRUNED and max(sampled.intermediate_values) == rung
    # the candidate ran every step of the budget and completed
    assert candidate.state == TrialState.COMPLETE
    assert max(candidate.intermediate_values) == settings.steps
    # ... and stood on the rung, where the sampled trial was measured against it
    assert "completed_rung_0" in candidate.system_attrs and "completed_rung_0" in sampled.system_attrs
