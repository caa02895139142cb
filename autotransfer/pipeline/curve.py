"""``tune``'s data-curve stage (issue 30): after the study, the handed-back protocol trained on
fractions of the train split (``handback.curve_runs``), the corrected power law fitted to it
(``handback.data_curve``), its line, and the record on the study, so that a resume keeps it."""

from __future__ import annotations

import time
from typing import Any

import optuna

from autotransfer.core.budget import format_duration
from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import ATTR, BUDGET_STOP_ATTR

__all__ = ["data_curve_stage", "DATA_CURVE_STAGE"]

#: The ledger's name for the stage.
DATA_CURVE_STAGE = "data curve"


def data_curve_stage(
    opened: Any,
    best: optuna.trial.FrozenTrial,
    *,
    asked: bool | None,
    budget: Any,
    micro_batch: int | None = None,
    ui: Any = None,
    keep: Any = None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """Measure and fit the data curve of ``best``'s protocol for the study ``opened``
    (``pipeline.tune.OpenStudy``): always when ``asked``; by default (``None``) only under a time
    budget (``JobBudget``) whose plan holds room for it; never when ``asked`` is False. Returns ``(record, notes)``: the record (``data_curve.curve_record``)
    or ``None``, and what the summary must say. A curve the study recorded for the same trial is
    kept, not measured again. ``keep`` (``search.trial_models.TrialModels``): the trial's own model,
    when kept and trained to the end, is the 100% point (``handback.curve_runs``)."""
    from autotransfer.handback.curve_runs import curve_cost, measure_curve
    from autotransfer.handback.data_curve import curve_record, fit_data_curve, load_prior
    from autotransfer.search.progress import NullUI

    ui = ui or NullUI()
    study, settings, prepared = opened.study, opened.settings, opened.prepared
    recorded = study.user_attrs.get(ATTR["data_curve"]) or {}
    if recorded.get("trial") == best.number and recorded.get("curve"):
        curve = recorded["curve"]
        return curve, [curve["line"], f"data curve: kept the one measured for trial {best.number} earlier"]
    if asked is False or (asked is None and (budget is None or not budget.limited)):
        return None, []  # off, or by default without a time budget (``--trials`` alone)
    trained_full = None
    if keep is not None and BUDGET_STOP_ATTR not in best.user_attrs:
        from autotransfer.backbones import create_backbone

        trained_full = keep.load(best.number, lambda: create_backbone(settings.model, num_classes=settings.num_classes))
    cost = curve_cost(settings, reuse_full=trained_full is not None)
    if budget is not None and budget.limited:
        plan = budget.plan
        if plan is not None and not plan.data_curve_s and not budget.data_curve_asked:
            return None, [n for n in plan.notes if n.startswith("data curve")] or [
                "data curve skipped: the time budget holds no room for it (give a larger --time-budget, or --data-curve)"
            ]
        left, unit = budget.clock.left(), budget.ledger.training_s
        if left is not None and unit and left < 0.8 * cost * unit and not asked:  # --data-curve: run it anyway
            return None, [
                f"data curve skipped: it needs about {format_duration(cost * unit)} and {format_duration(left)}"
                " of the time budget is left"
            ]
    protocol = Protocol.from_dict(best.params)
    ui.stage(
        f"data curve: trial {best.number}'s protocol on 25%, 50% and 100% of the train split"
        + (" (100%: the trial's own model)" if trained_full is not None else "")
    )
    t0 = time.monotonic()
    runs = measure_curve(
        protocol,
        settings,
        prepared,
        progress=ui.trial_progress,
        micro_batch=micro_batch,
        trained_full=trained_full,
        on_fraction=lambda f, n: ui.note(f"data curve: {f:.0%} of the train split ({n} images)"),
    )
    notes = list(runs.notes)
    if budget is not None:
        budget.ledger.add("data curve", time.monotonic() - t0, trainings=runs.trainings)
    if len({p.images for p in runs.points}) < 2:
        notes.append("data curve: fewer than 2 sizes measured, nothing to fit")
        return None, notes
    labelled = len(prepared.dataset)
    curve = fit_data_curve(
        runs.points,
        share=len(prepared.trainval) / labelled,
        labelled=labelled,
        metric=settings.metric or "accuracy",
        prior=load_prior(),  # seed 0, as the report refits it (``curve_from_record``)
    )
    record = {**curve_record(curve), "trial": best.number, "seconds": round(runs.seconds, 1)}
    study.set_user_attr(ATTR["data_curve"], {"trial": best.number, "curve": record})
    ui.note(record["line"])
    return record, [record["line"], *notes]
