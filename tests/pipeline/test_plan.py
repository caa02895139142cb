"""What a time budget buys (``pipeline.plan``): pure arithmetic on measured seconds."""

from __future__ import annotations

import pytest

from autotransfer.pipeline.plan import (
    DEFAULT_BUDGET_TRAININGS,
    MIN_AUTO_TRAININGS,
    MIN_SEARCH_TRAININGS,
    PUBLISH_S,
    TRIAL_COST,
    JobBudget,
    plan_job,
)


def test_a_large_budget_retrains_the_members_and_searches_the_rest():
    plan = plan_job(budget_s=1000.0, left_s=900.0, training_s=20.0, members=3)
    assert plan.retrain
    assert plan.final_s == pytest.approx(PUBLISH_S + 3 * 20.0)
    assert plan.search_s == pytest.approx(900.0 - plan.final_s)
    assert plan.trials == int(plan.search_s // (TRIAL_COST * 20.0))
    assert "3 retrain(s) on train+val" in plan.describe()


def test_a_small_budget_hands_back_the_trials_own_models():
    # 5 trainings left: 3 retrains would leave 2 for the search, under MIN_SEARCH_TRAININGS
    plan = plan_job(budget_s=120.0, left_s=100.0, training_s=20.0, members=3)
    assert 100.0 - PUBLISH_S - 60.0 < MIN_SEARCH_TRAININGS * 20.0
    assert not plan.retrain
    assert plan.final_s == PUBLISH_S
    assert plan.trials == int((100.0 - PUBLISH_S) // (TRIAL_COST * 20.0))
    assert "own models, no retrain" in plan.describe()


def test_a_budget_below_the_ensemble_says_so():
    plan = plan_job(budget_s=30.0, left_s=25.0, training_s=20.0, members=3)
    assert plan.trials == 1
    assert any("fewer than the 3 models" in n for n in plan.notes)


def test_self_training_is_skipped_when_the_budget_cannot_spare_it():
    small = plan_job(budget_s=300.0, left_s=280.0, training_s=20.0, members=3, self_training=True)
    assert small.self_training_s == 0.0 and any(n.startswith("self-training skipped") for n in small.notes)
    large = plan_job(budget_s=3000.0, left_s=2900.0, training_s=20.0, members=3, self_training=True)
    assert large.self_training_s == pytest.approx(9 * 20.0)


def test_no_budget_plans_the_retrain_and_no_limit():
    plan = plan_job(budget_s=None, left_s=None, training_s=20.0, members=3)
    assert plan.retrain and plan.search_s is None and plan.trials is None
    assert "no time budget" in plan.describe()


def test_a_training_time_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="training_s"):
        plan_job(budget_s=10.0, left_s=5.0, training_s=0.0, members=3)


def test_the_default_jobs_budget_is_fixed_in_trainings_once_one_was_timed():
    budget = JobBudget.start(None, auto=True)
    assert budget.limited and budget.clock.budget is None
    plan = budget.make_plan(10.0, members=3)
    assert budget.clock.budget == pytest.approx(DEFAULT_BUDGET_TRAININGS * 10.0)
    assert plan.budget_s == budget.clock.budget
    # a tiny study trains faster than it loads: the budget still leaves MIN_AUTO_TRAININGS
    tiny = JobBudget.start(None, auto=True)
    tiny.clock.started -= 100.0  # loading and estimating took 100 s
    tiny.make_plan(1.0, members=3)
    assert tiny.clock.budget == pytest.approx(100.0 + MIN_AUTO_TRAININGS * 1.0, abs=0.5)


def test_the_search_expires_before_the_final_stages_share():
    budget = JobBudget.start(100.0)
    budget.make_plan(30.0, members=3)  # 100 s cannot afford 3 retrains and a search: no retrain
    assert budget.plan is not None and not budget.plan.retrain
    assert not budget.search_expired()
    import time

    budget.clock.at = time.monotonic() + budget.plan.final_s - 0.5  # under the final stage's share left
    assert budget.search_expired()
    budget.clock.at = time.monotonic() + PUBLISH_S + 5.0
    assert budget.affords(0.0) and not budget.affords(1.0)
