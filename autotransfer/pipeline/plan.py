"""What a time budget buys: the plan ``tune`` prints before the search (docs/design.md, "The time
budget"). Pure arithmetic on measured seconds, so it is testable without training anything."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from autotransfer.core.budget import Deadline, Ledger, format_duration
from autotransfer.core.errors import InvalidValueError

__all__ = [
    "JobBudget",
    "JobPlan",
    "plan_job",
    "DEFAULT_BUDGET_TRAININGS",
    "TRIAL_COST",
    "RETRAIN_COST",
    "MIN_SEARCH_TRAININGS",
    "DISTILL_COST",
]

#: The default job's budget, in full trainings at the study's size, when neither ``--trials`` nor
#: ``--time-budget`` is given: under half the 12-cell grid that issue 27 measures the search
#: against. The grid's cells cost 0.8-0.9 of the timed full training (half of them freeze 3/8),
#: so the grid is about 10.5 of these units; 6 of them measured 0.54-0.57 of the grid's CPU
#: seconds (``benchmarks/RESULTS.md``, "Accuracy per compute").
DEFAULT_BUDGET_TRAININGS = 5.0
#: A search trial's mean cost in full trainings: frozen prefixes are served from the cache, the
#: probe controls train only the head, and pruned trials stop at a rung (measured on the judged
#: benchmark's studies: see ``benchmarks/RESULTS.md``, "Compute").
TRIAL_COST = 0.75
#: A final retrain on train+val in full trainings (no validation passes, a test pass).
RETRAIN_COST = 1.0
#: Distilling the ensemble into one network (``handback.deliver``), in full trainings: one training
#: on train+val without the frozen-prefix cache, with every member's forward pass at each step
#: (an estimate: one training, plus three forward passes per step at about a third of a step's cost
#: each; ``benchmarks/RESULTS.md``, "One network", lists the seconds each distillation took). The
#: default job's budget grows by it when distillation is asked, so that its search stays the one
#: issue 27 measured.
DISTILL_COST = 2.0
#: The search the final retrain must leave room for: below it the trials' own models are handed
#: back (a retrain of k members costs k trainings that a small budget cannot spare).
MIN_SEARCH_TRAININGS = 6.0
#: The default job's least budget beyond what loading and estimating took, in full trainings.
MIN_AUTO_TRAININGS = 4.0
#: Seconds held back for publishing (model folder, export, surface) and the test pass.
PUBLISH_S = 3.0


@dataclass(frozen=True)
class JobPlan:
    """How a job spends its time.

    Attributes:
        budget_s: the whole job's budget (``None``: no time limit, ``--trials`` alone decides).
        left_s: seconds left when the plan was made (after loading and estimating).
        training_s: one full training at the study's size (measured: ``train.time_training``).
        members: the handed-back ensemble's size.
        retrain: whether the final stage retrains the members on train+val (else the search
            trials' own models are handed back).
        final_s: seconds held for the final stage and publishing.
        search_s: seconds for controls + trials (``None``: no limit).
        trials: about how many search trials that buys (``None``: ``--trials`` decides).
        self_training_s: seconds held for self-training (0: not asked, or not affordable).
        distill_s: seconds held for distilling the members into one network (0: not asked, one
            member, or not affordable: the ensemble is handed back).
        data_curve_s: seconds held for the data-requirement curve after the study (0: not asked,
            or not affordable beside the search: ``handback.curve_runs``).
        notes: what the plan had to give up.
    """

    budget_s: float | None
    left_s: float | None
    training_s: float
    members: int
    retrain: bool
    final_s: float
    search_s: float | None
    trials: int | None
    self_training_s: float = 0.0
    distill_s: float = 0.0
    notes: tuple[str, ...] = ()
    data_curve_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line for the start of the job."""
        t = format_duration(self.training_s)
        if self.budget_s is None:
            final = f"then {self.members} retrain(s) on train+val" if self.retrain else "then the trials' own models"
            return f"plan: no time budget; one full training takes about {t}; the search runs its trials, {final}"
        share = 100 * self.final_s / self.budget_s
        final = (
            f"{self.members} retrain(s) on train+val ({share:.0f}% of the budget)"
            if self.retrain
            else f"the {self.members} best trials' own models, no retrain ({share:.0f}% held for the test and saving)"
        )
        parts = [
            f"plan: {format_duration(self.budget_s)} budget, {format_duration(self.left_s or 0)} left;"
            f" one full training takes about {t};"
            f" about {self.trials} trial(s) in {format_duration(self.search_s or 0)}, then {final}"
        ]
        if self.self_training_s:
            parts.append(f"self-training {format_duration(self.self_training_s)}")
        if self.distill_s:
            parts.append(f"then one network distilled from them ({format_duration(self.distill_s)})")
        if self.data_curve_s:
            parts.append(f"then the data curve ({format_duration(self.data_curve_s)})")
        return "; ".join(parts)


def plan_job(
    *,
    budget_s: float | None,
    left_s: float | None,
    training_s: float,
    members: int,
    self_training: bool = False,
    retrain: bool | None = None,
    distill: bool = False,
    data_curve: float = 0.0,
    data_curve_held: bool = False,
) -> JobPlan:
    """The plan for ``left_s`` seconds (of a ``budget_s`` budget) at ``training_s`` seconds per
    full training, handing back ``members`` models. ``retrain`` forces the final stage's choice
    (``None``: retrain only when the budget leaves ``MIN_SEARCH_TRAININGS`` for the search).
    ``distill``: the members are to be distilled into one network (``DISTILL_COST``), held before
    the retrains; without room for it beside ``MIN_SEARCH_TRAININGS``, the ensemble is handed back.
    ``data_curve``: the data-requirement curve's cost in full trainings (0: not asked), held last,
    only when it leaves ``MIN_SEARCH_TRAININGS`` for the search, else skipped with a note; or
    always with ``data_curve_held`` (``--data-curve`` asked for it; the default job's budget grew by it)."""
    if training_s <= 0 or not math.isfinite(training_s):
        raise InvalidValueError(f"training_s must be a positive number of seconds, but got {training_s!r}")
    retrain_s = members * RETRAIN_COST * training_s
    distill = distill and members > 1
    distill_s = DISTILL_COST * training_s if distill else 0.0
    if budget_s is None or left_s is None:
        return JobPlan(
            None,
            None,
            training_s,
            members,
            True if retrain is None else retrain,
            retrain_s,
            None,
            None,
            distill_s=distill_s,
            data_curve_s=data_curve * training_s,
        )
    notes: list[str] = []
    if distill and left_s - PUBLISH_S - distill_s < MIN_SEARCH_TRAININGS * training_s:
        notes.append(
            f"distillation skipped: it needs about {format_duration(distill_s)} the budget cannot spare beside"
            " the search; the ensemble is handed back (give a larger --time-budget for one network)"
        )
        distill_s = 0.0
    left_s -= distill_s
    if retrain is None:
        retrain = left_s - PUBLISH_S - retrain_s >= MIN_SEARCH_TRAININGS * training_s
    final_s = PUBLISH_S + (retrain_s if retrain else 0.0)
    st_s = 0.0
    if self_training:
        wanted = 3 * members * RETRAIN_COST * training_s  # teachers, students, final students
        if left_s - final_s - wanted >= MIN_SEARCH_TRAININGS * training_s:
            st_s = wanted
        else:
            notes.append(
                f"self-training skipped: it needs about {format_duration(wanted)} the budget cannot spare"
                " beside the search"
            )
    curve_s = data_curve * training_s
    if curve_s and not data_curve_held and left_s - final_s - st_s - curve_s < MIN_SEARCH_TRAININGS * training_s:
        notes.append(
            f"data curve skipped: it needs about {format_duration(curve_s)} the budget cannot spare beside the"
            " search (give a larger --time-budget, or --data-curve to hold it anyway)"
        )
        curve_s = 0.0
    search_s = max(0.0, left_s - final_s - st_s - curve_s)
    trials = int(search_s // (TRIAL_COST * training_s))
    if trials < 1:
        notes.append(
            f"the budget is spent before the search ({format_duration(left_s)} left, one training takes"
            f" {format_duration(training_s)}): one trial runs anyway, so that a model is handed back;"
            " give a larger --time-budget"
        )
        trials = 1
    elif trials < members:
        notes.append(
            f"the budget buys about {trials} trial(s) at {format_duration(training_s)} each: fewer than the"
            f" {members} models of the ensemble; give a larger --time-budget for a search"
        )
    return JobPlan(
        budget_s,
        left_s + distill_s,
        training_s,
        members,
        retrain,
        final_s,
        search_s,
        trials,
        st_s,
        distill_s,
        tuple(notes),
        curve_s,
    )


@dataclass
class JobBudget:
    """One job's clock, ledger and plan, handed from stage to stage by ``pipeline.tune``.

    ``clock`` runs from the job's start; with ``auto`` (the default job) its budget is fixed once
    one full training has been timed: ``trainings`` of them (``DEFAULT_BUDGET_TRAININGS`` unless
    told), and never less than what loading and estimating took plus ``MIN_AUTO_TRAININGS`` (or
    ``trainings``, when fewer: tiny studies train faster than they load)."""

    clock: Deadline = field(default_factory=Deadline)
    ledger: Ledger = field(default_factory=Ledger)
    auto: bool = False
    plan: JobPlan | None = None
    #: the data curve's cost in full trainings when the job asks for it (0: not asked), and
    #: whether it was asked explicitly (``--data-curve``: held whatever the search keeps)
    data_curve: float = 0.0
    data_curve_asked: bool = False
    #: with ``auto``: the budget in full trainings (a race of candidate models asks for fewer)
    trainings: float = DEFAULT_BUDGET_TRAININGS

    @classmethod
    def start(
        cls, seconds: float | None, *, auto: bool = False, trainings: float = DEFAULT_BUDGET_TRAININGS
    ) -> "JobBudget":
        if auto and not (math.isfinite(trainings) and trainings > 0):
            raise InvalidValueError(f"an auto budget needs a positive number of trainings, but got {trainings!r}")
        return cls(Deadline.after(seconds), Ledger(), auto, trainings=trainings)

    @property
    def limited(self) -> bool:
        """Whether the job has a time budget (given, or the default job's)."""
        return self.auto or self.clock.budget is not None

    def make_plan(
        self, training_s: float, *, members: int, self_training: bool = False, distill: bool = False
    ) -> JobPlan:
        """Fix the plan once one full training was timed (``training_s``); for ``auto``, the budget
        too (grown by ``DISTILL_COST`` when ``distill``, and by the data curve when ``--data-curve``
        asked for it: unasked, the curve runs only where it fits beside the search, so the default
        job costs what issue 27 measured)."""
        self.ledger.training_s = training_s
        if self.auto:
            extra = DISTILL_COST * training_s if distill and members > 1 else 0.0
            if self.data_curve_asked:  # --data-curve adds it to the default job, as --deliver distilled does;
                extra += self.data_curve * training_s  # unasked, it runs only where it fits beside the search
            least = self.clock.elapsed() + min(MIN_AUTO_TRAININGS, self.trainings) * training_s
            seconds = extra + max(self.trainings * training_s, least)
            self.clock = Deadline(self.clock.started + seconds, seconds, self.clock.started)
        self.plan = plan_job(
            budget_s=self.clock.budget,
            left_s=self.clock.left(),
            training_s=training_s,
            members=members,
            self_training=self_training,
            distill=distill,
            data_curve=self.data_curve,
            data_curve_held=self.data_curve_asked,
        )
        return self.plan

    def search_expired(self) -> bool:
        """Whether the search's share of the budget is spent (what the final stages hold is kept)."""
        if self.plan is None or self.clock.at is None:
            return False
        held = self.plan.final_s + self.plan.self_training_s + self.plan.distill_s + self.plan.data_curve_s
        return self.clock.earlier(held).expired()

    def affords(self, trainings: float) -> bool:
        """Whether ``trainings`` more full trainings (and publishing) fit in the time left."""
        left = self.clock.left()
        unit = self.ledger.training_s
        return left is None or unit is None or left >= trainings * unit + PUBLISH_S
