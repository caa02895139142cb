"""The candidate models of a ``--models`` job as a table: the estimator's evidence, each race's
score and seconds, and why a candidate was not raced (numbers only, no plotting)."""

from __future__ import annotations

from typing import Any

import optuna

from autotransfer.core.schema import ATTR

__all__ = ["MODEL_CHOICE_HEADERS", "model_choice_table", "study_model_choice"]

MODEL_CHOICE_HEADERS = [
    "rank",
    "model",
    "NLEEP",
    "LogME over chance",
    "similarity",
    "train img/s",
    "surface expects",
    "forecast (80%)",
    "race: best settled val",
    "race trials",
    "race s",
    "outcome",
]


def _num(value: Any, spec: str) -> str:
    return "—" if value is None else format(float(value), spec)


def _surface(expectation: dict[str, Any] | None) -> str:
    """``0.874 (3 studies, support 1.2)``: what the surface's past studies of the model reached near
    the target, or ``—`` without one."""
    if not expectation or expectation.get("score") is None:
        return "—"
    return (
        f"{float(expectation['score']):.3f} ({expectation.get('studies', 0)} studies,"
        f" support {float(expectation.get('support') or 0.0):.1f})"
    )


def _forecast(forecast: dict[str, Any] | None) -> str:
    """``0.912 (0.85-0.96)``: the forecast before any trial, or ``—``."""
    if not forecast or forecast.get("score") is None:
        return "—"
    low, high = forecast.get("interval") or (None, None)
    band = f" ({float(low):.2f}-{float(high):.2f})" if low is not None and high is not None else ""
    return f"{float(forecast['score']):.3f}{band}"


def model_choice_table(choice: dict[str, Any] | None) -> list[list[str]]:
    """One row per candidate (``MODEL_CHOICE_HEADERS``) of a ``ModelChoice.to_dict`` record, in the
    estimator's order; empty without one."""
    rows = []
    for c in (choice or {}).get("candidates") or []:
        ev = c.get("evidence") or {}
        raced = bool(c.get("study"))
        outcome = "chosen" if c.get("chosen") else ("raced" if raced else (c.get("dropped") or "not raced"))
        rows.append(
            [
                str(int(c.get("rank", 0)) + 1),
                str(c.get("model")),
                _num(ev.get("nleep"), ".3f"),
                _num(ev.get("logme_over_chance"), ".3f"),
                _num(ev.get("similarity"), ".3f"),
                _num(ev.get("images_per_s"), ".0f"),
                _surface(ev.get("surface")),
                _forecast(ev.get("forecast")),
                _num(c.get("score"), ".3f") if raced else "—",
                str(c.get("trials", 0)) if raced else "—",
                _num(c.get("seconds"), ".0f") if raced else "—",
                outcome,
            ]
        )
    return rows


def study_model_choice(study: optuna.Study) -> dict[str, Any] | None:
    """The study's recorded model choice (``None``: a one-model study)."""
    return study.user_attrs.get(ATTR["model_choice"]) or None
