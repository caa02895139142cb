"""Search-only studies, for the benchmarks that measure the search itself: ``tune``'s search trials
without the controls, the pick, the retrain or the export; how quickly a study's trials reach a
reference score; and a resumable JSON-lines log of benchmark results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

__all__ = ["enqueued_protocols", "run_search_study", "search_values", "trials_to_within", "ResultLog"]


def enqueued_protocols(prior, num_groups: int) -> list[tuple[Any, dict[str, Any]]]:
    """What ``tune`` enqueues for ``prior`` (the prior, its candidates, the survey's two protocols, a
    linear probe), controls left out; nothing for no prior."""
    from autotransfer.core.schema import CONTROL_ATTR
    from autotransfer.search.run import fixed_protocols

    if prior is None:
        return []
    return [(p, a) for p, a in fixed_protocols(prior, num_groups) if CONTROL_ATTR not in a]


def run_search_study(
    name: str,
    storage: str,
    settings,
    prepared,
    backbone,
    *,
    prior,
    trials: int,
    timeout: float | None = None,
) -> optuna.Study:
    """Create study ``name`` afresh (an older one of that name is deleted) with ``prior``'s ranges
    and enqueued protocols (wide ranges, nothing enqueued, when ``prior`` is None), then run
    multivariate TPE with successive-halving pruning for ``trials`` search trials or ``timeout`` s."""
    from autotransfer.prior import wide_prior, with_schedules
    from autotransfer.search.run import build_runner, run_search
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import create_study, load_study, make_pruner, make_sampler, study_exists

    store = open_storage(storage)
    if study_exists(store, name):  # an interrupted run: start it again from nothing
        optuna.delete_study(study_name=name, storage=store)
    if prior is not None:
        prior = with_schedules(prior, settings.schedules)
    space = wide_prior(settings.schedules) if prior is None else prior.space
    enqueue = enqueued_protocols(prior, backbone.num_groups)
    create_study(name, store, settings, profile=None, prior=None, space=space, enqueue=enqueue)
    study = load_study(name, store, sampler=make_sampler(settings.seed), pruner=make_pruner(settings))
    runner = build_runner(study, settings, prepared, preprocessing=backbone.preprocessing)
    run_search(study, runner, trials, timeout=timeout)
    return study


def search_values(study: optuna.Study) -> list[float | None]:
    """The search trials in order (controls excluded): a COMPLETE trial's value, else None."""
    from autotransfer.search.study import search_trials

    return [
        float(t.value) if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None else None
        for t in sorted(search_trials(study), key=lambda t: t.number)
    ]


def trials_to_within(values: list[float | None], reference: float, tolerance: float = 0.01) -> int | None:
    """1-based index of the first value within ``tolerance`` of ``reference``; None if none is."""
    for k, v in enumerate(values, start=1):
        if v is not None and v >= reference - tolerance - 1e-9:
            return k
    return None


class ResultLog:
    """Benchmark results as JSON lines: what earlier runs recorded, and each new one appended as it
    ends (so an interrupted benchmark resumes). Its studies live in a SQLite file beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.records: list[dict[str, Any]] = [json.loads(line) for line in lines if line.strip()]
        self.storage = f"sqlite:///{self.path.with_suffix('.db')}"

    def keys(self, *fields: str) -> set[tuple]:
        """The recorded ``fields`` tuples (what a resumed run skips)."""
        return {tuple(r[f] for f in fields) for r in self.records}

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
