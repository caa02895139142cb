"""The info step: the numbers behind each figure, on a hand-set study and on a real tiny study."""

from __future__ import annotations

import math

import pytest

from autotransfer.core.protocol import Protocol
from autotransfer.prior.placement import excess_threshold
from autotransfer.report import figures as F
from autotransfer.search.storage import open_storage
from autotransfer.search.study import best_transfer_trial, control_trials, load_study, read_attr, search_trials
from tests.report.conftest import SYN_GROUPS, synthetic_study


def test_divergence_info_reads_the_profile_and_marks_freeze_depths():
    study = synthetic_study()
    info = F.divergence_info(study)
    assert info.groups == SYN_GROUPS
    assert info.raw == [0.1, 0.2, 0.3, 0.5, 0.7]
    assert info.reference == [0.1, 0.15, 0.2, 0.2, 0.2]
    assert info.excess == [0.0, 0.05, 0.1, 0.3, 0.5]
    assert info.threshold == pytest.approx(excess_threshold())
    assert info.prior_freeze == read_attr(study, "prior")["freeze"]
    assert info.best_freeze == 3  # trial 8: freeze_frac 0.6 of G = 5
    rows = F.divergence_rows(info)
    assert rows[3] == ["3", "layer3", "0.5", "0.2", "0.3"]


def test_protocol_score_info_scores_pruned_trials_at_their_last_report():
    info = F.protocol_score_info(synthetic_study())
    assert [p.number for p in info.points] == [5, 6, 7, 8, 9]  # search trials only, controls left out
    pruned = [p for p in info.points if p.state == "PRUNED"]
    assert len(pruned) == 1 and pruned[0].score == 0.05 and pruned[0].step == 4
    assert (pruned[0].freeze, pruned[0].reinit) == (0, 2)  # reinit_frac 0.5 of the 5 trainable groups
    best = next(p for p in info.points if p.number == info.best_number)
    assert best.score == 0.45 and best.log10_elr == -1.0 and best.freeze == 3
    assert info.num_groups == 5 and info.metric == "accuracy"


def test_controls_info_and_negative_transfer():
    info = F.controls_info(synthetic_study())
    assert info.scratch == [(0, 0.30), (1, 0.20), (2, 0.10)]
    assert info.probe == [(3, 0.15), (4, 0.25)]
    assert (info.best_scratch, info.best_probe, info.best_protocol, info.best_trial) == (0.30, 0.25, 0.45, 8)
    assert info.test_score == 0.42 and not info.negative_transfer

    worse = [(Protocol(log10_elr=-1.0), 0.2, {12: 0.2}, "prior")]
    neg = F.controls_info(synthetic_study(scratch=(0.9, 0.1, 0.1), probe=(0.1, 0.1), search=worse))
    assert neg.negative_transfer and neg.best_scratch == 0.9 and neg.best_protocol == 0.2


def test_history_info_running_best():
    info = F.history_info(synthetic_study())
    assert info.numbers == [5, 6, 8, 9]  # COMPLETE search trials; the pruned trial 7 is left out
    assert info.values == [0.40, 0.35, 0.45, 0.20]
    assert info.best_so_far == [0.40, 0.40, 0.45, 0.45]
    assert info.sources[0] == "prior"


def test_importance_info_needs_enough_trials_and_sums_to_one():
    info = F.importance_info(synthetic_study())
    assert info.reason is None and info.n_trials == 4
    assert math.isclose(sum(info.importances), 1.0, rel_tol=1e-6)
    assert info.importances == sorted(info.importances, reverse=True)
    assert "log10_elr" in info.params
    # the seeded evaluator gives the same numbers twice
    assert F.importance_info(synthetic_study()) == info

    few = [(Protocol(log10_elr=-1.0), 0.3, {12: 0.3}, "prior"), (Protocol(log10_elr=-2.0), 0.2, {12: 0.2}, "search")]
    info = F.importance_info(synthetic_study(search=few))
    assert info.params == [] and info.n_trials == 2 and "at least 3" in info.reason


def test_prior_found_positions_in_the_search_range():
    study = synthetic_study()
    info = F.prior_found_info(study)
    rows = {r.param: r for r in info.rows}
    # found = trial 8: log10 ELR -1.0 in [-3.5, 0.5] -> 0.625; head lr x20 in [1, 100] log -> log10(20)/2
    assert rows["log10_elr"].found_pos == pytest.approx(2.5 / 4.0)
    assert rows["head_lr_mult"].found_pos == pytest.approx(math.log10(20) / 2)
    assert rows["head_lr_mult"].log
    centre = read_attr(study, "prior")["centre"]
    assert rows["log10_elr"].prior == pytest.approx(centre["log10_elr"])
    assert rows["bn_mode"].prior_pos is None and rows["bn_mode"].found == "adapt"
    assert info.found_integers == (3, 0) and info.best_trial == 8
    assert info.prior_score == 0.40 and info.found_score == 0.45
    text = F.prior_found_rows(info, "accuracy")
    assert text[-1] == ["validation accuracy", "0.4", "", "0.45"]


def test_overview_and_profile_rows():
    study = synthetic_study()
    ov = F.overview_info(study)
    assert (ov.n_search, ov.n_complete, ov.n_pruned, ov.n_controls) == (5, 4, 1, 5)
    assert (ov.best_trial, ov.val_score, ov.test_score) == (8, 0.45, 0.42)
    rows = dict(F.profile_rows(study))
    assert rows["images"] == "160" and rows["similarity (0-1)"] == "0.600"
    # a test score recorded for another trial than the current best is not reported as the best's
    stale = synthetic_study(with_final=False)
    stale.set_user_attr("autotransfer.final", {"trial": 0, "test_score": 0.99})
    assert F.overview_info(stale).test_score is None


def test_infos_agree_with_a_real_study(made_study):
    study = load_study(made_study.name, open_storage(made_study.storage_url, heartbeat=False))
    best = best_transfer_trial(study)
    profile = read_attr(study, "profile")

    div = F.divergence_info(study)
    assert div.excess == pytest.approx(profile["divergence"]["excess"])
    assert len(div.groups) == profile["num_groups"] == 5

    points = F.protocol_score_info(study).points
    assert len(points) == len(search_trials(study)) == 4
    assert {p.source for p in points} >= {"prior", "portfolio:#0"}  # the centre, then the portfolio (issue 27)
    for p in points:
        trial = study.trials[p.number]
        assert (p.freeze, p.reinit) == (trial.user_attrs["freeze"], trial.user_attrs["reinit"])

    controls = F.controls_info(study)
    assert len(controls.scratch) == 1 and len(controls.probe) == 2
    assert controls.best_scratch == max(t.value for t in control_trials(study) if t.user_attrs["control"] == "scratch")
    assert controls.best_protocol == best.value
    assert 0.0 <= controls.test_score <= 1.0

    history = F.history_info(study)
    assert history.best_so_far[-1] == max(t.value for t in search_trials(study) if t.value is not None)

    importance = F.importance_info(study)
    assert importance.reason is None and importance.n_trials == 4
    assert math.isclose(sum(importance.importances), 1.0, rel_tol=1e-6)
