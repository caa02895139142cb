"""The study's sampler: start-up trials drawn around the prior's centre, then multivariate TPE.

Why not plain ``TPESampler(n_startup_trials=k)``: TPE counts every finished trial towards its
start-up, and a study is created with about ten enqueued trials (controls, the prior's centre,
its neighbours, the survey's protocols, a linear probe). TPE therefore skipped its random phase
and fitted its "good" density (the top 10%: one or two trials) on those fixed protocols from the
first sampled trial on, so the search collapsed onto them: ``bn_mode`` came out ``frozen`` in 29 of
32 sampled trials of two studies, the mode of the linear-probe controls (issue 14). Optuna 5 also
deprecates TPE's own ``consider_prior`` / ``prior_weight``, so a prior cannot be injected there.

``PriorSampler`` counts only *sampled* trials (those not enqueued with fixed parameters). The first
``startup`` of them are drawn independently: each float parameter from a normal around the prior's
centre with the prior's spread (in decades for log parameters), truncated to the study's range,
categorical ones uniformly; with no centre (``--prior none``), uniformly. After that, multivariate
TPE (seeded, ``constant_liar`` for parallel workers) learns from every finished trial.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from autotransfer.core.errors import InvalidTypeError, InvalidValueError

__all__ = ["PriorSampler", "is_sampled", "default_startup"]


def is_sampled(trial: FrozenTrial) -> bool:
    """True for a trial whose parameters come from the sampler (not enqueued with fixed values)."""
    return "fixed_params" not in trial.system_attrs


def default_startup(search_budget: int, enqueued: int) -> int:
    """Start-up draws: half of the sampled trials the budget leaves, at least 4 and at most 10."""
    return int(min(10, max(4, (search_budget - enqueued) // 2)))


class PriorSampler(optuna.samplers.BaseSampler):
    """Prior-centred start-up draws, then multivariate TPE (see the module docstring).

    Args:
        seed: seeds both the start-up draws and TPE.
        startup: the number of sampled trials drawn around the centre before TPE takes over.
        centre: parameter values of the prior's centre (``Protocol.to_dict()``), or ``None``.
        spread: one standard deviation per parameter (decades for log-scale parameters).
    """

    def __init__(
        self,
        seed: int,
        *,
        startup: int = 5,
        centre: dict[str, Any] | None = None,
        spread: dict[str, float] | None = None,
    ) -> None:
        if startup < 0:
            raise InvalidValueError(f"startup must be >= 0, but got {startup!r}")
        self.startup = int(startup)
        self.centre = dict(centre or {})
        self.spread = dict(spread or {})
        self._rng = np.random.RandomState(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._tpe = optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=0, constant_liar=True)

    def reseed_rng(self) -> None:
        """Fresh randomness (each parallel worker draws its own start-up protocols)."""
        self._rng = np.random.RandomState()
        self._tpe.reseed_rng()

    def in_startup(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` is among the first ``startup`` sampled trials of ``study``."""
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and is_sampled(t)]
        return len(earlier) < self.startup

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not is_sampled(trial) or self.in_startup(study, trial):
            return {}
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self.in_startup(study, trial):
            return self.draw(param_name, param_distribution)
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def draw(self, name: str, distribution: BaseDistribution) -> Any:
        """One start-up value: around the centre when known, else uniform over the range."""
        if isinstance(distribution, CategoricalDistribution):
            return distribution.choices[self._rng.randint(len(distribution.choices))]
        if not isinstance(distribution, (FloatDistribution, IntDistribution)):
            raise InvalidTypeError(f"unsupported distribution for {name!r}: {distribution!r}")
        low, high, log = float(distribution.low), float(distribution.high), bool(distribution.log)
        if low == high:
            return distribution.low
        to = math.log10 if log else float
        lo, hi = to(low), to(high)
        centre, sd = self.centre.get(name), self.spread.get(name)
        value = None
        if centre is not None and sd and float(centre) > (0 if log else -math.inf):
            c = to(float(centre))
            for _ in range(64):  # truncated normal by rejection; the range always holds mass near c
                x = self._rng.normal(c, sd)
                if lo <= x <= hi:
                    value = x
                    break
        if value is None:
            value = self._rng.uniform(lo, hi)
        out = 10.0**value if log else value
        out = min(max(out, low), high)
        return int(round(out)) if isinstance(distribution, IntDistribution) else out
