"""Pruning: sampled trials are pruned on noise-aware successive-halving rungs only when their score
is told apart from the rung's bar; enqueued candidates run to the full budget but still stand on
the rungs; every decision is recorded on the trial."""

from __future__ import annotations

from dataclasses import replace

import optuna
from optuna.trial import TrialState

from autotransfer.core.protocol import ProtocolSpace
from autotransfer.core.schema import PRUNE_REASON_ATTR, RUNGS_ATTR, SOURCE_ATTR
from autotransfer.prior import linear_probe_protocol, recommended_protocol
from autotransfer.search.pruning import NoiseAwarePruner, effective_images, rung_steps
from autotransfer.search.run import build_runner, run_search
from autotransfer.search.storage import open_storage
from autotransfer.search.study import create_study, load_study, make_pruner, make_sampler
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
    rung = make_pruner(settings).rungs[0]  # the first rung: a third of the budget
    assert rung == 4 and settings.steps == 12
    # the premise: at the first rung the bad protocol is behind the good one, so a sampled copy loses there
    assert first.intermediate_values[rung] > candidate.intermediate_values[rung]
    assert sampled.state == TrialState.PRUNED and max(sampled.intermediate_values) == rung
    # the candidate ran every step of the budget and completed
    assert candidate.state == TrialState.COMPLETE
    assert max(candidate.intermediate_values) == settings.steps
    # ... and stood on the rung, where the sampled trial was measured against it: the recorded
    # reason names the step, the bar (the candidate-led top third) and the noise margin
    reason = sampled.user_attrs[PRUNE_REASON_ATTR]
    assert (
        reason.startswith("pruned: step 4:")
        and "noise margin" in reason
        and f"{settings.val_images} validation images" in reason
    )
    assert sampled.user_attrs[RUNGS_ATTR] == [reason]
    assert PRUNE_REASON_ATTR not in candidate.user_attrs


def _rung_study(values: list[float]) -> optuna.Study:
    """An in-memory study whose trials reported ``values`` at step 10 (controls excluded)."""
    study = optuna.create_study(direction="maximize")
    for v in values:
        trial = study.ask()
        trial.report(v, 10)
        study.tell(trial, v)
    return study


def _asking(study: optuna.Study, value: float):
    trial = study.ask()
    trial.report(value, 10)
    return study._storage.get_trial(trial._trial_id)


def test_a_score_within_noise_of_the_bar_is_not_pruned():
    study = _rung_study([0.70, 0.70, 0.55])
    frozen = _asking(study, 0.62)
    # 30 validation images: 0.62 against the bar 0.70 is a gap of 2.4 images, inside one SE
    kept = NoiseAwarePruner([10], n_eff=30).decide(study, frozen)
    assert not kept.prune and "gap +0.080" in kept.reason
    # the same gap on 3,000 images is signal: pruned
    assert NoiseAwarePruner([10], n_eff=3000).decide(study, frozen).prune
    # far below the bar on 30 images: pruned
    assert NoiseAwarePruner([10], n_eff=30).decide(study, _asking(study, 0.30)).prune


def test_no_rung_decides_on_too_few_images_or_between_rungs():
    study = _rung_study([0.9, 0.9, 0.9])
    frozen = _asking(study, 0.1)
    assert not NoiseAwarePruner([10], n_eff=12).decide(study, frozen).prune
    assert not NoiseAwarePruner([20], n_eff=300).decide(study, frozen).prune  # step 10 is not a rung
    assert NoiseAwarePruner([10], n_eff=300).decide(study, frozen).prune


def test_rungs_sit_at_thirds_of_the_budget_on_the_validation_schedule():
    assert rung_steps(88, 14, (1 / 3, 2 / 3)) == [42, 70]
    assert rung_steps(60, 15, (1 / 3, 2 / 3)) == [30, 45]
    assert rung_steps(12, 12, (1 / 3,)) == []  # the end of the budget is the result, not a rung


def test_balanced_accuracy_counts_the_smallest_class():
    assert effective_images([21, 9], "balanced_accuracy") == 25  # elpv at N = 200
    assert effective_images([21, 9], "accuracy") == 30
    assert effective_images([3] * 10, "balanced_accuracy") == 30  # balanced classes: all of them
