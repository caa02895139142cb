"""The drawing step of ``autotransfer evaluate --html``: one self-contained page from an ``EvaluationInfo``."""

from __future__ import annotations

import html
from pathlib import Path

from autotransfer.core.errors import UserError

__all__ = ["confusion_figure", "per_class_figure", "evaluation_html", "write_evaluation_html"]


def confusion_figure(info):
    """A plotly heatmap of ``info.confusion`` (rows: true class, columns: predicted)."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Heatmap(
            z=info.confusion,
            x=info.classes,
            y=info.classes,
            colorscale="Blues",
            text=info.confusion,
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>",
        )
    )
    fig.update_layout(
        title="confusion matrix",
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        height=max(360, 28 * len(info.classes) + 160),
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def per_class_figure(info):
    """Grouped bars of per-class precision and recall."""
    import plotly.graph_objects as go

    fig = go.Figure(
        [
            go.Bar(name="precision", x=info.classes, y=info.precision),
            go.Bar(
                name="recall",
                x=info.classes,
                y=info.recall,
                customdata=info.support,
                hovertemplate="%{x}: recall %{y:.3f} (%{customdata} images)<extra></extra>",
            ),
        ]
    )
    fig.update_layout(title="per-class precision and recall", barmode="group", yaxis_range=[0, 1.02], height=380)
    fig.update_xaxes(type="category")
    return fig


def evaluation_html(info, model_dir: str | Path | None = None) -> str:
    """The page: the metric with its interval, per-class table, confusion matrix (plotly.js inline)."""
    esc = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(c)}</td><td>{p:.3f}</td><td>{r:.3f}</td><td>{s}</td></tr>"
        for c, p, r, s in zip(info.classes, info.precision, info.recall, info.support)
    )
    figs = [
        confusion_figure(info).to_html(
            full_html=False, include_plotlyjs=True, include_mathjax=False, config={"displaylogo": False}
        ),
        per_class_figure(info).to_html(
            full_html=False, include_plotlyjs=False, include_mathjax=False, config={"displaylogo": False}
        ),
    ]
    skipped = f"<p>skipped {info.skipped} unreadable or missing file(s)</p>" if info.skipped else ""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>autotransfer evaluate</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:1.5rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .6rem}</style></head><body>"
        f"<h1>{esc(model_dir or 'model')} on {esc(info.target)}</h1>"
        f"<p><b>{esc(info.metric)}: {info.score:.4f}</b> on {info.images} images"
        f" (95% interval {info.low:.3f}–{info.high:.3f})</p>{skipped}"
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>images</th></tr>"
        f"{rows}</table>" + "".join(f"<div>{f}</div>" for f in figs) + "</body></html>"
    )


def write_evaluation_html(info, path: str | Path, model_dir: str | Path | None = None) -> Path:
    """Write ``evaluation_html(info)`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"--html {str(path)!r} is a directory: give a file name such as {str(path / 'evaluation.html')!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(evaluation_html(info, model_dir), encoding="utf-8")
    return path
