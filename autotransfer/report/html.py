"""A study's report as one self-contained HTML page (plotly.js inline: no network needed to view it)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import optuna
import yaml

from autotransfer.core.errors import UserError
from autotransfer.report import figures, plots
from autotransfer.report.anytime import anytime_info, ledger_table
from autotransfer.report.model_choice import MODEL_CHOICE_HEADERS, model_choice_table, study_model_choice
from autotransfer.search.study import read_attr, read_settings

__all__ = ["report_html", "write_report", "write_study_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem 2rem 4rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; margin: 1rem 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6rem 1rem; min-width: 10rem; }
.card .v { font-size: 1.6rem; font-weight: 600; } .card .k { color: #666; font-size: 0.85rem; }
.warn { color: #b00020; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid #ddd; padding: 0.8rem; overflow-x: auto; font-size: 0.82rem; }
.figure { margin: 0.5rem 0 1rem; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str] | None, rows: Sequence[Sequence[object]]) -> str:
    head = "" if headers is None else "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _num(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


class _Figures:
    """Renders figures as HTML divs; the first one carries plotly.js inline, the rest reuse it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig) -> str:
        if fig is None:
            return ""
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=self.count == 0,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True},
        )
        self.count += 1
        return f'<div class="figure">{div}</div>'


def _export_yaml(study: optuna.Study) -> str | None:
    from autotransfer.handback.export import export_payload

    try:
        payload = export_payload(study)
    except UserError:
        return None
    plain = json.loads(json.dumps(payload, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return yaml.safe_dump(plain, sort_keys=False)


def report_html(study: optuna.Study) -> str:
    """The report page: task profile, prior vs found, history, importances, controls, test score, config."""
    fig = _Figures()
    settings = read_settings(study)
    ov = figures.overview_info(study)
    metric = ov.metric.replace("_", " ")
    versions = read_attr(study, "versions") or {}
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autotransfer report: {_esc(study.study_name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>autotransfer report: {_esc(study.study_name)}</h1>",
        f'<p class="sub">target <code>{_esc(settings.target)}</code> · model <code>{_esc(settings.model)}</code> ·'
        f" metric {_esc(metric)} · budget {_esc(settings.steps)} steps at {_esc(settings.resolution)} px, batch"
        f" {_esc(settings.batch_size)}, {_esc(settings.optimizer)} · written {made} by autotransfer"
        f" {_esc(versions.get('autotransfer', '?'))}, optuna {_esc(versions.get('optuna', '?'))}</p>",
    ]
    controls = figures.controls_info(study)
    cards = [
        (f"held-out test {metric}", _num(ov.test_score)),
        (f"best validation {metric} (trial {ov.best_trial})", _num(ov.val_score)),
        ("from scratch (control)", _num(controls.best_scratch)),
        ("linear probe (control)", _num(controls.best_probe)),
        ("search trials", f"{ov.n_search}"),
    ]
    parts.append(
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{_esc(v)}</div><div class="k">{_esc(k)}</div></div>' for k, v in cards
        )
        + "</div>"
    )
    if ov.schedule is not None:
        parts.append(f"<p>Best protocol (trial {_esc(ov.best_trial)}): schedule {_esc(ov.schedule)}.</p>")
    if controls.negative_transfer:
        parts.append('<p class="warn">Negative transfer: training from scratch beats every transfer protocol.</p>')

    parts.append("<h2>Task profile</h2>")
    parts.append(_table(None, [list(row) for row in figures.profile_rows(study)]))
    div = figures.divergence_info(study)
    if div is not None:
        parts.append(fig(plots.divergence_figure(div)))
        parts.append(_table(figures.DIVERGENCE_HEADERS, figures.divergence_rows(div)))

    parts.append("<h2>Prior against the found protocol</h2>")
    prior = figures.prior_found_info(study)
    if prior.kind is None:
        parts.append("<p>This study was run without a prior (wide ranges, nothing enqueued).</p>")
    else:
        parts.append(
            f"<p>Prior: {_esc(prior.kind)}, quadrant {_esc(prior.quadrant)}; found: trial {_esc(prior.best_trial)}.</p>"
        )
        if prior.best_trial is not None:
            parts.append(fig(plots.prior_found_figure(prior)))
        parts.append(_table(figures.PRIOR_FOUND_HEADERS, figures.prior_found_rows(prior, ov.metric)))
        if prior.rationale:
            parts.append(
                "<p>Why this prior:</p><ul>" + "".join(f"<li>{_esc(r)}</li>" for r in prior.rationale) + "</ul>"
            )

    parts.append("<h2>Optimisation history</h2>")
    history = figures.history_info(study)
    parts.append(fig(plots.history_figure(history)) if history.numbers else "<p>No completed search trial yet.</p>")
    score = figures.protocol_score_info(study)
    if score.points:
        parts.append(fig(plots.protocol_score_figure(score)))

    choice = study_model_choice(study)
    if choice:
        parts.append("<h2>Which model</h2>")
        parts.append(
            f"<p>Chosen: <b>{_esc(choice['chosen'])}</b> ({_esc(choice['reason'])}). The estimator ranked the"
            " candidates; the first ones raced on short studies of their own, and the winner's study was"
            " continued.</p>"
        )
        parts.append(_table(MODEL_CHOICE_HEADERS, model_choice_table(choice)))

    parts.append("<h2>Compute</h2>")
    anytime = anytime_info(study)
    if anytime.numbers:
        parts.append(fig(plots.anytime_figure(anytime)))
    ledger = ledger_table(study)
    if ledger:
        parts.append("<p>The last job's compute ledger: seconds per stage, and as full trainings at this size.</p>")
        parts.append(_table(["stage", "seconds", "full trainings"], ledger))

    parts.append("<h2>Parameter importances</h2>")
    importance = figures.importance_info(study)
    if importance.reason is not None:
        parts.append(f"<p>No importances: {_esc(importance.reason)}.</p>")
    else:
        parts.append(fig(plots.importance_figure(importance)))

    parts.append("<h2>Controls</h2>")
    parts.append(fig(plots.controls_figure(controls)))
    rows = [[f"from scratch, trial {n}", _num(v)] for n, v in controls.scratch]
    rows += [[f"linear probe, trial {n}", _num(v)] for n, v in controls.probe]
    rows.append([f"best protocol, trial {controls.best_trial}", _num(controls.best_protocol)])
    parts.append(_table(["run", f"validation {metric}"], rows))

    parts.append("<h2>Held-out test score</h2>")
    if ov.test_score is None:
        parts.append(
            "<p>Not measured yet: <code>autotransfer tune</code> retrains the best protocol on train+val"
            " and scores it on the held-out test split at the end of a study.</p>"
        )
    else:
        parts.append(
            f"<p>Test {_esc(metric)} <b>{_num(ov.test_score)}</b>: the best protocol (trial {_esc(ov.best_trial)},"
            f" validation {_num(ov.val_score)}) retrained on train+val with the study's budget, scored once on the"
            " held-out test split.</p>"
        )

    surface = plots.surface_figure(study)
    if surface is not None:
        parts.append("<h2>Surface of optimal protocols</h2>")
        parts.append(fig(surface))

    parts.append("<h2>Exported config</h2>")
    exported = _export_yaml(study)
    if exported is None:
        parts.append("<p>No completed transfer trial yet: nothing to export.</p>")
    else:
        parts.append(
            f"<p>What <code>autotransfer export {_esc(study.study_name)}</code> writes"
            " (<code>autotransfer train --config</code> reproduces the final model from it):</p>"
        )
        parts.append(f"<pre>{_esc(exported)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(study: optuna.Study, path: str | Path) -> Path:
    """Write ``report_html(study)`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"-o {str(path)!r} is a directory: give a file name such as {str(path / 'report.html')!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(study), encoding="utf-8")
    return path


def write_study_report(study_name: str, path: str | Path, storage: str | None = None) -> Path:
    """Open ``storage`` (default ``studies/autotransfer.db``), load ``study_name`` and write its report."""
    from autotransfer.report.dashboard import open_dashboard_storage
    from autotransfer.search.study import load_study

    return write_report(load_study(study_name, open_dashboard_storage(storage)), path)
