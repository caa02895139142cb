"""The drawing step of the report: plotly figures from the infos of ``autotransfer.report.figures``."""

from __future__ import annotations

import math

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from autotransfer.handback.data_curve import CurveSeries
from autotransfer.report.anytime import AnytimeInfo
from autotransfer.report.figures import (
    ControlsInfo,
    DivergenceInfo,
    HistoryInfo,
    ImportanceInfo,
    PriorFoundInfo,
    ProtocolScoreInfo,
)
from autotransfer.report.style import TITLE_PREFIX
from autotransfer.report.surface_plots import surface_figure as draw_surface

__all__ = [
    "divergence_figure",
    "protocol_score_figure",
    "controls_figure",
    "history_figure",
    "importance_figure",
    "prior_found_figure",
    "surface_figure",
    "data_curve_figure",
]

#: Every autotransfer figure's title starts with this (the browser test looks for it).
_TEMPLATE = "plotly_white"
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _layout(fig: go.Figure, title: str, *, height: int = 420) -> go.Figure:
    fig.update_layout(
        title={"text": TITLE_PREFIX + title, "x": 0.01, "xanchor": "left"},
        template=_TEMPLATE,
        height=height,
        margin={"l": 60, "r": 30, "t": 70, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": -0.3, "x": 0},
    )
    return fig


def divergence_figure(info: DivergenceInfo) -> go.Figure:
    """Raw, reference and excess divergence per depth group, the freeze threshold, and ``f`` marks."""
    x = list(range(len(info.groups)))
    fig = go.Figure()
    if info.reference is None:  # no same-domain reference: the excess is the raw divergence
        fig.add_trace(
            go.Scatter(
                x=x,
                y=info.excess,
                mode="lines+markers",
                name="divergence (no reference: excess = raw)",
                line={"width": 3},
            )
        )
    else:
        fig.add_trace(
            go.Scatter(x=x, y=info.excess, mode="lines+markers", name="excess over reference", line={"width": 3})
        )
        fig.add_trace(go.Scatter(x=x, y=info.raw, mode="lines", name="raw", line={"dash": "dash", "color": "grey"}))
        fig.add_trace(
            go.Scatter(x=x, y=info.reference, mode="lines", name="same-domain reference", line={"dash": "dot"})
        )
    if info.threshold is not None:
        fig.add_hline(
            y=info.threshold,
            line={"dash": "dot", "color": "#d62728"},
            annotation_text="freeze threshold",
            annotation_position="top left",
        )
    for f, label, colour in ((info.prior_freeze, "prior", "#9467bd"), (info.best_freeze, "best", "#2ca02c")):
        if f is not None:
            fig.add_vline(
                x=f - 0.5,
                line={"color": colour, "width": 2},
                annotation_text=f"{label}: freeze f = {f}",
                annotation_position="top right" if label == "best" else "bottom right",
            )
    fig.update_xaxes(
        tickvals=x,
        ticktext=[f"{i} {name}" for i, name in zip(x, info.groups)],
        title="depth group (stem first)",
        range=[-0.6, len(x) - 0.4],
    )
    fig.update_yaxes(title=f"divergence ({info.method})", rangemode="tozero")
    return _layout(fig, f"excess divergence by depth ({info.method})")


def protocol_score_figure(info: ProtocolScoreInfo) -> go.Figure:
    """Score against log10 ELR (coloured by freeze depth ``f``), and over (``f``, ``r``) coloured by score."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("score vs log10 ELR, by freeze f", "freeze f × reinit r, coloured by score"),
        horizontal_spacing=0.12,
    )
    metric = info.metric.replace("_", " ")
    for k, f in enumerate(sorted({p.freeze for p in info.points})):
        points = [p for p in info.points if p.freeze == f]
        fig.add_trace(
            go.Scatter(
                x=[p.log10_elr for p in points],
                y=[p.score for p in points],
                mode="markers",
                name=f"f = {f}",
                marker={
                    "size": 11,
                    "color": _COLOURS[k % len(_COLOURS)],
                    "symbol": ["circle" if p.state == "COMPLETE" else "circle-open" for p in points],
                    "line": {"width": 2, "color": _COLOURS[k % len(_COLOURS)]},
                },
                text=[_hover(p) for p in points],
                hoverinfo="text",
            ),
            row=1,
            col=1,
        )
    if info.points:
        scores = [p.score for p in info.points]
        fig.add_trace(
            go.Scatter(
                x=[p.freeze + _jitter(p.number) for p in info.points],
                y=[p.reinit + _jitter(p.number + 7) for p in info.points],
                mode="markers",
                name=metric,
                showlegend=False,
                marker={
                    "size": 16,
                    "color": scores,
                    "colorscale": "Viridis",
                    "cmin": min(scores),
                    "cmax": max(scores) if max(scores) > min(scores) else min(scores) + 1e-9,
                    "symbol": ["circle" if p.state == "COMPLETE" else "circle-open" for p in info.points],
                    "colorbar": {"title": metric, "x": 1.02, "len": 0.8},
                },
                text=[_hover(p) for p in info.points],
                hoverinfo="text",
            ),
            row=1,
            col=2,
        )
    best = [p for p in info.points if p.number == info.best_number]
    if best:
        b = best[0]
        star = {"size": 20, "symbol": "star", "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}}
        fig.add_trace(
            go.Scatter(
                x=[b.log10_elr],
                y=[b.score],
                mode="markers",
                name=f"best (trial {b.number})",
                marker=star,
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[b.freeze + _jitter(b.number)],
                y=[b.reinit + _jitter(b.number + 7)],
                mode="markers",
                showlegend=False,
                marker=star,
                hoverinfo="skip",
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title="log10 ELR (lr / (1 − momentum))", row=1, col=1)
    fig.update_yaxes(title=f"validation {metric}", row=1, col=1)
    g = info.num_groups
    fig.update_xaxes(title="freeze f (frozen groups)", dtick=1, range=[-0.5, (g or 1) + 0.5], row=1, col=2)
    fig.update_yaxes(title="reinit r (re-initialised groups)", dtick=1, range=[-0.5, (g or 1) + 0.5], row=1, col=2)
    title = f"protocol against {metric}" + (
        "" if all(p.state == "COMPLETE" for p in info.points) else " (open: pruned)"
    )
    return _layout(fig, title, height=460)


def _hover(p) -> str:
    state = "" if p.state == "COMPLETE" else f" (pruned at step {p.step})"
    return (
        f"trial {p.number} [{p.source}]{state}<br>score {p.score:.4f}<br>log10 ELR {p.log10_elr:.2f}"
        f"<br>f = {p.freeze} ({p.freeze_frac:.2f}), r = {p.reinit} ({p.reinit_frac:.2f})"
    )


def _jitter(seed: int) -> float:
    """A small, deterministic offset so trials at the same integer (f, r) do not hide each other."""
    return 0.18 * math.sin(12.9898 * (seed + 1))


def controls_figure(info: ControlsInfo) -> go.Figure:
    """Best of each control kind and the best transfer protocol (bars), every control run (dots)."""
    metric = info.metric.replace("_", " ")
    scratch = f"from scratch (best of {len(info.scratch)})"
    probe = f"linear probe (best of {len(info.probe)})"
    bars = [
        (label, value, colour)
        for label, value, colour in (
            (scratch, info.best_scratch, "#7f7f7f"),
            (probe, info.best_probe, "#bcbd22"),
            (f"best protocol (trial {info.best_trial})", info.best_protocol, "#2ca02c"),
        )
        if value is not None
    ]
    values = [v for _, v, _ in bars]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=values,
            y=[lab for lab, _, _ in bars],
            orientation="h",
            marker={"color": [c for _, _, c in bars]},
            name=f"validation {metric}",
            text=[f"{v:.3f}" for v in values],
            textposition="auto",
        )
    )
    for runs, label, legend in ((info.scratch, scratch, True), (info.probe, probe, not info.scratch)):
        if runs:
            fig.add_trace(
                go.Scatter(
                    x=[v for _, v in runs],
                    y=[label] * len(runs),
                    mode="markers",
                    name="each control run",
                    marker={"color": "black", "size": 12, "symbol": "line-ns-open", "line": {"width": 2}},
                    text=[f"trial {n}: {v:.4f}" for n, v in runs],
                    hoverinfo="text",
                    showlegend=legend,
                )
            )
    if info.test_score is not None:
        fig.add_vline(
            x=info.test_score,
            line={"dash": "dash", "color": "#2ca02c"},
            annotation_text=f"best, retrained: test {info.test_score:.3f}",
            annotation_position="top",
        )
    fig.update_xaxes(title=f"validation {metric}", range=[0, max([1.0, *values])])
    title = "controls against the best protocol"
    if info.negative_transfer:
        title += " — NEGATIVE TRANSFER: from scratch wins"
    return _layout(fig, title, height=360)


def history_figure(info: HistoryInfo) -> go.Figure:
    """Each completed search trial's score in trial order, and the running best."""
    metric = info.metric.replace("_", " ")
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=info.numbers,
            y=info.values,
            mode="markers",
            name=f"trial {metric}",
            marker={"size": 9},
            text=[f"trial {n} [{s}]: {v:.4f}" for n, v, s in zip(info.numbers, info.values, info.sources)],
            hoverinfo="text",
        )
    )
    fig.add_trace(
        go.Scatter(x=info.numbers, y=info.best_so_far, mode="lines", name="best so far", line={"shape": "hv"})
    )
    fig.update_xaxes(title="trial number", tickformat="d")
    fig.update_yaxes(title=f"validation {metric}")
    return _layout(fig, "optimisation history (search trials)")


def anytime_figure(info: AnytimeInfo) -> go.Figure:
    """The best settled validation score found so far against the compute spent (in full trainings
    when the study's ledger measured one, else seconds of trial time)."""
    metric = info.metric.replace("_", " ")
    x = info.trainings if info.trainings is not None else info.seconds
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=info.best,
            mode="lines+markers",
            line={"shape": "hv"},
            name="best so far",
            text=[f"after trial {n}" for n in info.numbers],
            hoverinfo="text+x+y",
        )
    )
    fig.update_xaxes(title="compute spent (full trainings)" if info.trainings is not None else "trial seconds")
    fig.update_yaxes(title=f"best settled validation {metric}")
    return _layout(fig, "anytime: best found for the compute spent")


def data_curve_figure(info: CurveSeries) -> go.Figure:
    """The data-requirement curve: the measured points (80% binomial bars) and the corrected
    power law's forecast with its 80% band, against labelled images (log scale)."""
    metric = info.metric.replace("_", " ")
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=info.labelled + info.labelled[::-1],
            y=info.high + info.low[::-1],
            fill="toself",
            fillcolor="rgba(31, 119, 180, 0.15)",
            line={"width": 0},
            hoverinfo="skip",
            name="80% interval",
        )
    )
    fig.add_trace(
        go.Scatter(x=info.labelled, y=info.centre, mode="lines", name="forecast", line={"color": _COLOURS[0]})
    )
    fig.add_trace(
        go.Scatter(
            x=info.measured_labelled,
            y=info.measured,
            mode="markers",
            name="measured (val + test)",
            marker={"size": 10, "color": _COLOURS[1]},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [h - v for h, v in zip(info.measured_high, info.measured)],
                "arrayminus": [v - lo for v, lo in zip(info.measured, info.measured_low)],
            },
        )
    )
    fig.add_vline(x=info.study_labelled, line_dash="dot", line_color="grey")
    fig.update_xaxes(title="labelled images (log scale)", type="log")
    fig.update_yaxes(title=metric)
    return _layout(fig, info.line.removeprefix("data curve: "), height=440)


def importance_figure(info: ImportanceInfo) -> go.Figure | None:
    """fANOVA importances as horizontal bars, or ``None`` when there are none (see ``info.reason``)."""
    if info.reason is not None or not info.params:
        return None
    fig = go.Figure(
        go.Bar(
            x=info.importances[::-1],
            y=info.params[::-1],
            orientation="h",
            text=[f"{v:.2f}" for v in info.importances[::-1]],
            textposition="auto",
        )
    )
    fig.update_xaxes(title="importance (fANOVA, sums to 1)", range=[0, 1])
    return _layout(fig, f"parameter importances ({info.n_trials} completed search trials)", height=360)


def prior_found_figure(info: PriorFoundInfo) -> go.Figure:
    """Where the prior centre and the best protocol sit in each parameter's search range (0 = low, 1 = high)."""
    rows = [r for r in info.rows if r.prior_pos is not None or r.found_pos is not None][::-1]
    fig = go.Figure()
    for r in rows:
        if r.prior_pos is not None and r.found_pos is not None:
            fig.add_trace(
                go.Scatter(
                    x=[r.prior_pos, r.found_pos],
                    y=[r.param, r.param],
                    mode="lines",
                    line={"color": "lightgrey", "width": 4},
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
    for name, key, pos, symbol, colour in (
        ("prior", "prior", "prior_pos", "diamond", "#9467bd"),
        (f"found (trial {info.best_trial})", "found", "found_pos", "star", "#2ca02c"),
    ):
        shown = [r for r in rows if getattr(r, pos) is not None]
        fig.add_trace(
            go.Scatter(
                x=[getattr(r, pos) for r in shown],
                y=[r.param for r in shown],
                mode="markers",
                name=name,
                marker={"symbol": symbol, "size": 14, "color": colour},
                text=[
                    f"{r.param} {key}: {getattr(r, key):.4g} (range {r.low:.3g}–{r.high:.3g}{', log' if r.log else ''})"
                    for r in shown
                ],
                hoverinfo="text",
            )
        )
    fig.add_vrect(x0=0, x1=1, fillcolor="lightblue", opacity=0.15, line_width=0)
    xs = [v for r in rows for v in (r.prior_pos, r.found_pos) if v is not None]
    fig.update_xaxes(
        title="position in the search range (0 = low, 1 = high)",
        range=[min([-0.05, *xs]) - 0.05, max([1.05, *xs]) + 0.05],
    )
    return _layout(fig, "prior against found protocol", height=420)


def surface_figure(study: optuna.Study) -> go.Figure | None:
    """The surface of optimal protocols around this study's point (``report.surface_plots``), or
    ``None`` when no surface is recorded for the study's model."""
    return draw_surface(study)
