"""``autotransfer.tune``: the main job as ``autotransfer tune`` runs it, for Python users and the CLI
alike (one set of defaults): the outputs under one folder (``out``), the default time budget, the
surface prior and the surface record, progress opt-in, Optuna's per-trial lines kept quiet."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from autotransfer.core.budget import parse_duration
from autotransfer.core.errors import UserError
from autotransfer.core.settings import StudySettings
from autotransfer.pipeline.outcome import TuneResult
from autotransfer.search.progress import NullUI

__all__ = ["tune_job", "LoggingUI", "candidate_models"]

log = logging.getLogger("autotransfer")


class LoggingUI(NullUI):
    """Progress as ``logging`` records of the ``autotransfer`` logger (INFO): what a library
    reports when its caller asked for no progress display."""

    def stage(self, text: str) -> None:
        log.info("%s", text)

    def note(self, text: str) -> None:
        log.info("%s", text)

    def trial_end(self, trial: Any) -> None:
        log.info("trial %s: %s %s", trial.number, trial.state.name.lower(), trial.value)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO line per trial off for the job (the job reports trials itself)."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def tune_job(
    target: str | StudySettings | None = None,
    *,
    out: str | Path = "studies",
    storage: str | None = None,
    study: str | None = None,
    trials: int | None = None,
    time_budget: float | str | None = None,
    timeout: float | None = None,
    warm_start: str | None = None,
    workers: int = 1,
    prune: bool = True,
    progress: bool | Any = False,
    estimator_progress: bool = False,
    data_curve: bool | None = None,
    models: str | None = None,
    **options: Any,
) -> TuneResult:
    """Run (or resume) the protocol search for ``target`` as ``autotransfer tune`` does.

    Args:
        target: a dataset spec (``builtin:animals``, ``folder:PATH``, a CSV manifest), ``None`` for
            the embedded demo, or a ``StudySettings`` used as given (no option below changes it).
        out: the folder for everything the job writes: the model ``runs/STUDY``, the export
            ``exports/STUDY.yaml``, the surface ``surface.json`` (``$AUTOTRANSFER_SURFACE`` wins)
            and, unless ``storage`` or ``$AUTOTRANSFER_STORAGE`` names another, ``autotransfer.db``.
        trials, time_budget: the limits; with both, the first reached wins. With neither, the
            default job's budget (``pipeline.plan.DEFAULT_BUDGET_TRAININGS`` full trainings; the
            embedded demo's is ``search.demo.DEFAULT_TIME_BUDGET``).
            A ``StudySettings`` target runs its own ``trials`` unless ``time_budget`` is given.
        progress: ``True`` draws progress on stderr (bars on a terminal, lines in a log), or a UI
            object (``search.progress``); ``False`` logs stages and trials to the
            ``autotransfer`` logger at INFO and prints nothing.
        data_curve: the data-requirement curve after the study (``pipeline.tune.tune``): ``None``
            under a time budget that holds room for it, ``True`` always, ``False`` never.
        models: candidate models, comma-separated (``--models A,B,C``; ``auto``, also as ``model``,
            is the offline zoo): the estimator ranks them, the first ones race on short studies and
            the winner's study is continued (``pipeline.model_choice``; the default budget is
            ``model_choice.AUTO_TRAININGS`` trainings of the first raced model).
        **options: the other ``tune`` options by their ``StudySettings`` names (``model``, ``n``,
            ``resolution``, ``seed``, ``pick``, ``schedules``, ``unlabelled``, ...).

    Returns:
        the ``TuneResult`` (``model_path``: the handed-back model folder; ``ledger``: its compute).
    """
    from autotransfer.core.paths import safe_name
    from autotransfer.pipeline.options import tune_outputs, tune_settings
    from autotransfer.pipeline.tune import tune
    from autotransfer.search.progress import make_ui

    if study is not None:
        safe_name(study)  # refused before any work: the name becomes a folder and a file
    budget: float | str | None = parse_duration(time_budget) if time_budget is not None else None
    outputs = tune_outputs(out, storage)
    if isinstance(target, StudySettings) and models is not None:
        raise UserError("--models takes a target spec, not StudySettings: give the candidates' target as a spec")
    candidates = None if isinstance(target, StudySettings) else candidate_models(options.get("model"), models)
    if candidates is not None:  # the settings are checked on the first candidate; one candidate is a plain study
        options = {**options, "model": candidates[0]}
        candidates = candidates if len(candidates) > 1 else None
    if isinstance(target, StudySettings):
        if options:
            raise UserError(
                f"tune got StudySettings and options {sorted(options)}: give the options inside the settings,"
                " or a target spec with the options"
            )
        settings = target if trials is None else StudySettings.from_dict({**target.to_dict(), "trials": trials})
    else:
        settings = tune_settings(target, {**options, "trials": trials}, prune=prune, surface=outputs.surface)
        if budget is None and trials is None:
            from autotransfer.search.demo import DEFAULT_TIME_BUDGET

            budget = DEFAULT_TIME_BUDGET if target is None else "auto"
    ui = make_ui() if progress is True else (progress or LoggingUI())
    if candidates is not None and not isinstance(target, StudySettings):
        if workers > 1:
            raise UserError("--models (or --model auto) runs on one local worker: drop --workers")
        try:
            with quiet_optuna():
                return _choose_and_tune(
                    candidates,
                    target,
                    options={**options, "trials": trials},
                    prune=prune,
                    outputs=outputs,
                    study=study,
                    budget=budget,
                    warm_start=warm_start,
                    timeout=timeout,
                    ui=ui,
                    estimator_progress=estimator_progress,
                    data_curve=data_curve,
                )
        finally:
            ui.close()
    try:
        with quiet_optuna():
            return tune(
                settings,
                study_name=study,
                storage=outputs.storage,
                timeout=timeout,
                warm_start=warm_start,
                export_dir=outputs.export_dir,
                runs_dir=outputs.runs_dir,
                estimator_kwargs={"progress": bool(estimator_progress)},
                surface_store=outputs.surface,
                ui=ui,
                workers=workers,
                time_budget=budget,
                data_curve=data_curve,
            )
    finally:
        ui.close()


def candidate_models(model: str | None, models: str | None) -> list[str] | None:
    """The candidate model specs of ``--models A,B`` or ``--model auto`` / ``--model A,B``
    (``backbones.parse_models``: checked, ``auto`` expanded), or ``None`` for one model."""
    from autotransfer.backbones.catalog import AUTO_MODELS, parse_models

    if models is not None and model is not None:
        raise UserError(f"give --model or --models, not both (got --model {model!r} and --models {models!r})")
    text = models if models is not None else model
    if text is None or ("," not in text and text.strip() != AUTO_MODELS):
        return None
    return parse_models(text)


def _choose_and_tune(
    candidates: list[str],
    target: str | None,
    *,
    options: dict[str, Any],
    prune: bool,
    outputs: Any,
    study: str | None,
    budget: float | str | None,
    warm_start: str | None,
    timeout: float | None,
    ui: Any,
    estimator_progress: bool,
    data_curve: bool | None = None,
) -> TuneResult:
    """Rank ``candidates`` on the study's train+val split (``estimate.candidates``; the test split
    stays unseen, as in each study's own estimate), then race the first ones and continue the
    winner's study (``pipeline.model_choice``)."""
    import math
    import time

    from autotransfer.estimate.candidates import score_candidates
    from autotransfer.pipeline.model_choice import Contender, race_and_tune
    from autotransfer.pipeline.options import tune_settings
    from autotransfer.pipeline.tune import BUDGET_ESTIMATE_IMAGES
    from autotransfer.search.prepared import prepare_data
    from autotransfer.surface import expected_scores

    def settings_for(model: str) -> StudySettings:
        return tune_settings(target, {**options, "model": model}, prune=prune, surface=outputs.surface)

    first = settings_for(candidates[0])
    t0 = time.monotonic()
    ui.stage(f"ranking {len(candidates)} candidate models: {', '.join(candidates)}")
    # the study's own train+val split, as each study's estimate reads it: the test split stays unseen
    prepared = prepare_data(first)
    # as each study's own estimate reads them (``pipeline.tune``), so that a race starts from its profile
    ranked = score_candidates(
        prepared.trainval,
        candidates,
        resolution=first.resolution,
        batch_size=first.batch_size,
        max_images=BUDGET_ESTIMATE_IMAGES if budget is not None else 1000,
        device=str(prepared.device),
        progress=estimator_progress,
        log=ui.note,
    )
    # what the surface's past studies reached with each model near this target (the learned prior's answer)
    log10_n = math.log10(max(1, len(prepared.trainval)))
    expected = expected_scores(outputs.surface, {c.model: (log10_n, c.similarity) for c in ranked.candidates})
    forecasts = _forecasts(ranked, len(prepared.dataset), first)
    kept = [c.model for c in ranked.candidates if c.reason is None]
    if kept and kept[0] in forecasts:
        ui.note(f"{kept[0]}: {forecasts[kept[0]].describe()}")
    contenders = [
        Contender(
            c.model,
            rank,
            evidence={
                **c.to_dict(),
                "surface": expected[c.model].to_dict(),
                "forecast": forecasts[c.model].to_dict() if c.model in forecasts else None,
            },
            dropped=c.reason,
            profile=ranked.profiles.get(c.model),
        )
        for rank, c in enumerate(ranked.candidates)
    ]
    return race_and_tune(
        contenders,
        settings_for,
        study_name=study,
        storage=outputs.storage,
        time_budget="auto" if budget == "auto" else (float(budget) if isinstance(budget, (int, float)) else None),
        ranking_s=time.monotonic() - t0,
        runs_dir=outputs.runs_dir,
        export_dir=outputs.export_dir,
        surface_store=outputs.surface,
        warm_start=warm_start,
        timeout=timeout,
        data_curve=data_curve,
        ui=ui,
        estimator_kwargs={"progress": bool(estimator_progress)},
    )


def _forecasts(ranked: Any, n: int, settings: StudySettings) -> dict[str, Any]:
    """The forecast before any trial of each candidate whose estimator the ranking kept
    (``forecast.forecast_from_estimator``); none where the shipped evidence cannot be read."""
    from autotransfer.forecast.evidence import EvidenceError
    from autotransfer.forecast.predict import forecast_from_estimator

    out: dict[str, Any] = {}
    for model, estimator in ranked.estimators.items():
        try:
            out[model] = forecast_from_estimator(estimator, n, resolution=settings.resolution, trials=settings.trials)
        except EvidenceError:
            return {}
    return out
