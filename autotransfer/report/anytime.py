"""The numbers behind the anytime figure: what the study had found for the compute it had spent
(docs/design.md, "The time budget"). Pure numbers from the study's trials, testable without plotly;
``report.plots.anytime_figure`` draws them."""

from __future__ import annotations

import math
from typing import NamedTuple

import optuna
from optuna.trial import TrialState

from autotransfer.core.schema import ATTR, CONTROL_ATTR, HISTORY_ATTR

__all__ = ["AnytimeInfo", "anytime_info", "ledger_table"]


class AnytimeInfo(NamedTuple):
    """After each trial (in the order they ended): the compute spent so far and the best settled
    validation score so far among transfer trials.

    ``seconds``: cumulative trial wall seconds (controls and pruned trials included);
    ``trainings``: the same in full trainings (``None`` without a measured unit);
    ``best``: the running best settled score (``None`` before the first transfer trial).
    """

    metric: str
    numbers: list[int]
    seconds: list[float]
    trainings: list[float] | None
    best: list[float | None]


def _settled(trial: optuna.trial.FrozenTrial) -> float | None:
    history = trial.user_attrs.get(HISTORY_ATTR) or []
    tail = [float(v) for _, v in history[-3:]]
    if tail:
        return sum(tail) / len(tail)
    return float(trial.value) if trial.value is not None and math.isfinite(trial.value) else None


def anytime_info(study: optuna.Study) -> AnytimeInfo:
    """The study's anytime curve (see ``AnytimeInfo``)."""
    settings = study.user_attrs.get(ATTR["settings"]) or {}
    ledger = study.user_attrs.get(ATTR["ledger"]) or {}
    unit = ledger.get("training_s")
    ended = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.datetime_complete is not None
    ]
    ended.sort(key=lambda t: (t.datetime_complete, t.number))
    numbers, seconds, best = [], [], []
    spent, running = 0.0, None
    for t in ended:
        spent += float(t.user_attrs.get("wall_time_s", 0.0))
        if t.state == TrialState.COMPLETE and CONTROL_ATTR not in t.user_attrs:
            value = _settled(t)
            if value is not None and (running is None or value > running):
                running = value
        numbers.append(t.number)
        seconds.append(spent)
        best.append(running)
    trainings = [s / unit for s in seconds] if unit else None
    return AnytimeInfo(str(settings.get("metric") or "score"), numbers, seconds, trainings, best)


def ledger_table(study: optuna.Study) -> list[list[str]]:
    """Rows ``[stage, seconds, trainings]`` of the last job's compute ledger (empty without one)."""
    ledger = study.user_attrs.get(ATTR["ledger"]) or {}
    in_t = ledger.get("in_trainings") or {}
    rows = [
        [stage, f"{float(s):.0f}", f"{in_t[stage]:.2f}" if stage in in_t else "—"]
        for stage, s in (ledger.get("stages") or {}).items()
    ]
    if rows:
        rows.append(
            ["total", f"{float(ledger.get('total_s', 0.0)):.0f}", f"{in_t['total']:.2f}" if "total" in in_t else "—"]
        )
    return rows
