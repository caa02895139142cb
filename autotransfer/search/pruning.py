"""Noise-aware successive halving: prune a trial only when its score is told apart from the bar.

Optuna's ``SuccessiveHalvingPruner`` prunes a trial that is not in the top ``1/eta`` of its rung,
however small the difference. With 30 validation images one image is 3.3 points, and the scores
of different protocols early in training mostly measure how fast the zero-initialised head moves:
measured on elpv at N = 200, every sampled trial was pruned at the first rung (step 14 of 88),
while the candidates that set the bar there ended 5-10 points lower (docs/design.md, "Pruning").
No optuna pruner takes the size of the evaluation set into account (``WilcoxonPruner`` needs
per-instance scores, not a learning curve), so this one is written here:

- rungs sit at fixed fractions of the budget (default 1/3 and 2/3: late enough that trained
  protocols separate from chance), snapped to the validation schedule;
- at a rung the bar is the score of the ``ceil(n/eta)``-th best trial that reached it (optuna's
  successive-halving rule), over the trials that are not controls;
- a trial is pruned only when ``bar - score`` exceeds ``z`` binomial standard errors of the
  difference of two scores measured on ``n_eff`` images (``score_margin``);
- below ``min_images`` effective validation images no rung can decide, and nothing is pruned.

Every decision is kept in ``reasons`` (trial number -> one line) so the objective can record why
a trial was pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotransfer.core.errors import InvalidValueError

__all__ = ["NoiseAwarePruner", "RungDecision", "score_margin", "effective_images", "rung_steps"]

#: Below this many effective validation images no rung decides (one image is 5 points or more).
MIN_IMAGES = 20


def effective_images(class_counts: list[int], metric: str) -> int:
    """The number of images a validation score behaves as if measured on.

    Accuracy: all of them. Balanced accuracy is the mean of ``C`` per-class rates, each a
    proportion over its own ``n_c`` images, so its variance is ``sum_c p(1-p) / n_c / C^2`` at a
    common rate ``p``: that of an accuracy on ``C^2 / sum_c(1 / n_c)`` images (``C`` times the
    harmonic mean of the class sizes; 25 for elpv's 21 + 9 validation images, not 30).
    """
    counts = [int(c) for c in class_counts if c > 0]
    if not counts:
        return 0
    if metric == "balanced_accuracy":
        return int(len(counts) ** 2 / sum(1.0 / c for c in counts))
    return int(sum(counts))


def score_margin(bar: float, value: float, n_eff: int, z: float = 1.0) -> float:
    """``z`` standard errors of the difference of two binomial scores on ``n_eff`` images each.

    Uses Agresti-Coull adjusted proportions ``(k + 2) / (n + 4)`` so that a score of 0 or 1 still
    carries its uncertainty.
    """
    if n_eff <= 0:
        return math.inf

    def var(p: float) -> float:
        adj = (p * n_eff + 2.0) / (n_eff + 4.0)
        return adj * (1.0 - adj) / (n_eff + 4.0)

    return float(z * math.sqrt(var(bar) + var(value)))


def rung_steps(steps: int, eval_every: int, fractions: tuple[float, ...]) -> list[int]:
    """The first validation step at or after ``fraction * steps`` for each fraction (below the end
    of the budget: the last validation is the trial's result, not a rung)."""
    out: list[int] = []
    for frac in fractions:
        step = max(eval_every, math.ceil(frac * steps / eval_every - 1e-9) * eval_every)
        if step < steps and step not in out:
            out.append(step)
    return sorted(out)


@dataclass(frozen=True)
class RungDecision:
    """One pruning decision: whether to prune, and why (a line for the trial's attributes)."""

    prune: bool
    reason: str


class NoiseAwarePruner(optuna.pruners.BasePruner):
    """Successive halving over fixed rungs with a noise margin (see the module docstring).

    Args:
        rungs: the steps at which trials are compared (``rung_steps``).
        n_eff: effective validation images (``effective_images``).
        eta: reduction factor; the bar is the ``ceil(n/eta)``-th best score at the rung.
        z: the margin in standard errors of a difference.
        min_images: below this ``n_eff`` nothing is pruned.
        min_trials: a rung decides only once this many trials (the one asking included) reached it.
    """

    def __init__(
        self,
        rungs: list[int],
        n_eff: int,
        *,
        eta: float = 3.0,
        z: float = 1.0,
        min_images: int = MIN_IMAGES,
        min_trials: int = 3,
    ) -> None:
        if eta <= 1:
            raise InvalidValueError(f"eta must be > 1, but got {eta!r}")
        if z < 0:
            raise InvalidValueError(f"z must be >= 0, but got {z!r}")
        self.rungs = sorted(int(r) for r in rungs)
        self.n_eff = int(n_eff)
        self.eta = float(eta)
        self.z = float(z)
        self.min_images = int(min_images)
        self.min_trials = int(min_trials)
        self.reasons: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        decision = self.decide(study, trial)
        if trial.last_step in self.rungs:
            self.reasons[trial.number] = ("pruned: " if decision.prune else "kept: ") + decision.reason
        return decision.prune

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> RungDecision:
        """The decision for ``trial`` at its latest reported step."""
        step = trial.last_step
        if step is None or step not in self.rungs:
            return RungDecision(False, "not at a rung")
        if self.n_eff < self.min_images:
            return RungDecision(False, f"{self.n_eff} effective validation images: too few for any rung to decide")
        value = trial.intermediate_values[step]
        if value is None or not math.isfinite(value):
            return RungDecision(True, f"step {step}: non-finite score {value!r}")
        # controls (scratch, linear probe) are baselines, not competitors: they do not set the bar
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if t.number != trial.number and "control" not in t.user_attrs and step in t.intermediate_values
        ]
        scores = sorted([v for v in others if v is not None and math.isfinite(v)] + [value], reverse=True)
        if len(scores) < self.min_trials:
            return RungDecision(False, f"step {step}: only {len(scores)} trials at this rung")
        k = max(1, math.ceil(len(scores) / self.eta))
        bar = scores[k - 1]
        margin = score_margin(bar, value, self.n_eff, self.z)
        gap = bar - value
        line = (
            f"step {step}: score {value:.3f} vs the rung's bar {bar:.3f} (the top 1/{self.eta:g} of"
            f" {len(scores)} trials), gap {gap:+.3f}, noise margin {margin:.3f}"
            f" ({self.z:g} SE at {self.n_eff} validation images)"
        )
        return RungDecision(gap > margin, line)
