"""Surface plots: grid numbers (info step) and plotly surface + contour figures and HTML (drawing step).

Over 400 lines: the surface's grid numbers and its four figures (surface, overview, parameter
slices, the per-study hook) share the fitted model's grid, so they stay in one module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from autotransfer.core.errors import InvalidValueError
from autotransfer.core.protocol import schedule_words
from autotransfer.report.slices import NORMALISATION, SliceInfo, load_slice_info
from autotransfer.report.style import TITLE_PREFIX
from autotransfer.surface.fit import PARAMS, SurfaceModel
from autotransfer.surface.store import POINT_ATTR, SurfacePoint, SurfaceStore, active_store

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SurfaceGridInfo",
    "surface_grid_info",
    "param_figure",
    "surface_overview_figure",
    "slices_figure",
    "write_surface_html",
    "surface_figure",
    "store_path_for",
    "LABELS",
]

#: Axis / colour-bar labels per fitted parameter.
LABELS = {
    "log10_elr": "log10 ELR",
    "reinit_frac": "reinit fraction",
    "freeze_frac": "freeze fraction",
    "log10_head_lr_mult": "log10 head lr multiplier",
}
#: How far the grid reaches beyond the measured points, in each axis (log10 N decades, similarity).
_PAD = (0.25, 0.05)


class SurfaceGridInfo(NamedTuple):
    """One parameter's surface on a grid, and the measured points.

    Attributes:
        param: the fitted parameter (``PARAMS``).
        log10_n: ``(gx,)`` grid of log10 N.
        similarity: ``(gy,)`` grid of similarity.
        mean, std: ``(gy, gx)`` predicted mean and std (rows follow ``similarity``).
        points_log10_n, points_similarity, points_value: ``(n,)`` the measured points.
        points_label: ``(n,)`` study names.
    """

    param: str
    log10_n: np.ndarray
    similarity: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    points_log10_n: np.ndarray
    points_similarity: np.ndarray
    points_value: np.ndarray
    points_label: list[str]


def surface_grid_info(
    model: SurfaceModel, param: str, grid: int | tuple[Sequence[float], Sequence[float]] = 25
) -> SurfaceGridInfo:
    """Mean and std of ``param`` over a grid of log10 N x similarity, plus the measured points.

    ``grid`` is a point count per axis (the measured extent, padded, similarity within [0, 1]) or
    explicit ``(log10_n, similarity)`` axes.
    """
    model._check_fitted()
    if isinstance(grid, int):
        if grid < 2:
            raise InvalidValueError(f"grid must have at least 2 points per axis, but got {grid!r}")
        lo, hi = model.X_.min(axis=0), model.X_.max(axis=0)
        xs = np.linspace(lo[0] - _PAD[0], hi[0] + _PAD[0], grid)
        ys = np.linspace(max(0.0, lo[1] - _PAD[1]), min(1.0, hi[1] + _PAD[1]), grid)
        if ys[-1] - ys[0] < 1e-9:
            ys = np.linspace(max(0.0, ys[0] - 0.1), min(1.0, ys[0] + 0.1), grid)
    else:
        xs, ys = (np.asarray(a, dtype=float) for a in grid)
    gx, gy = np.meshgrid(xs, ys)
    mean, std = model.predict_param(param, gx.ravel(), gy.ravel())
    if param in ("reinit_frac", "freeze_frac"):
        mean = np.clip(mean, 0.0, 1.0)
    return SurfaceGridInfo(
        param=param,
        log10_n=xs,
        similarity=ys,
        mean=mean.reshape(gx.shape),
        std=std.reshape(gx.shape),
        points_log10_n=model.X_[:, 0].copy(),
        points_similarity=model.X_[:, 1].copy(),
        points_value=np.asarray(model.y_[param], dtype=float).copy(),
        points_label=[p.study for p in model.points_],
    )


# --- drawing ---------------------------------------------------------------------------------
def _title(text: str) -> str:

    return TITLE_PREFIX + text


def param_figure(info: SurfaceGridInfo, *, mark: tuple[float, float] | None = None):
    """A 3-D surface (left) and a contour with the measured points (right) of one parameter.

    ``mark`` = ``(log10_n, similarity)`` of a study to highlight on the contour.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    label = LABELS.get(info.param, info.param)
    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"type": "surface"}, {"type": "xy"}]],
        subplot_titles=(f"{label}: surface", f"{label}: contour, std as hover"),
    )
    fig.add_trace(
        go.Surface(
            x=info.log10_n,
            y=info.similarity,
            z=info.mean,
            colorscale="Viridis",
            showscale=False,
            name=label,
            hovertemplate="log10 N %{x:.2f}<br>similarity %{y:.2f}<br>%{z:.3f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter3d(
            x=info.points_log10_n,
            y=info.points_similarity,
            z=info.points_value,
            mode="markers",
            marker={"size": 4, "color": "black"},
            text=info.points_label,
            name="measured optima",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Contour(
            x=info.log10_n,
            y=info.similarity,
            z=info.mean,
            colorscale="Viridis",
            customdata=info.std,
            colorbar={"title": label, "x": 1.02},
            name=label,
            hovertemplate="log10 N %{x:.2f}<br>similarity %{y:.2f}<br>%{z:.3f} ± %{customdata:.3f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=info.points_log10_n,
            y=info.points_similarity,
            mode="markers",
            text=info.points_label,
            marker={"color": "white", "line": {"color": "black", "width": 1}, "size": 9},
            customdata=info.points_value,
            name="measured optima",
            hovertemplate="%{text}<br>value %{customdata:.3f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    if mark is not None:
        fig.add_trace(
            go.Scatter(
                x=[mark[0]],
                y=[mark[1]],
                mode="markers",
                name="this study",
                marker={"symbol": "star", "size": 16, "color": "#d62728"},
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title="log10 N", row=1, col=2)
    fig.update_yaxes(title="similarity", row=1, col=2)
    fig.update_scenes(xaxis_title="log10 N", yaxis_title="similarity", zaxis_title=label)
    fig.update_layout(
        title={"text": _title(f"surface of optimal protocols: {label}"), "x": 0.01},
        template="plotly_white",
        height=460,
        margin={"l": 40, "r": 40, "t": 80, "b": 40},
    )
    return fig


def surface_overview_figure(model: SurfaceModel, *, grid: int = 25, mark: tuple[float, float] | None = None):
    """Contours of every fitted parameter side by side, with the measured points (and ``mark``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    params = list(model.gps_)
    fig = make_subplots(
        rows=1,
        cols=len(params),
        subplot_titles=[LABELS.get(p, p) for p in params],
        shared_yaxes=True,
        horizontal_spacing=0.04,
    )
    for i, param in enumerate(params, start=1):
        info = surface_grid_info(model, param, grid)
        fig.add_trace(
            go.Contour(
                x=info.log10_n,
                y=info.similarity,
                z=info.mean,
                colorscale="Viridis",
                showscale=False,
                customdata=info.std,
                name=LABELS.get(param, param),
                hovertemplate="log10 N %{x:.2f}<br>similarity %{y:.2f}<br>%{z:.3f} ± %{customdata:.3f}<extra></extra>",
                contours={"showlabels": True},
            ),
            row=1,
            col=i,
        )
        fig.add_trace(
            go.Scatter(
                x=info.points_log10_n,
                y=info.points_similarity,
                mode="markers",
                text=info.points_label,
                marker={"color": "white", "line": {"color": "black", "width": 1}, "size": 8},
                showlegend=i == 1,
                name="measured optima",
            ),
            row=1,
            col=i,
        )
        if mark is not None:
            fig.add_trace(
                go.Scatter(
                    x=[mark[0]],
                    y=[mark[1]],
                    mode="markers",
                    name="this study",
                    showlegend=i == 1,
                    marker={"symbol": "star", "size": 14, "color": "#d62728"},
                ),
                row=1,
                col=i,
            )
        fig.update_xaxes(title="log10 N", row=1, col=i)
    fig.update_yaxes(title="similarity", row=1, col=1)
    fig.update_layout(
        title={"text": _title(f"surface of optimal protocols ({model.n_points_} studies)"), "x": 0.01},
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 30, "t": 80, "b": 60},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


#: Marker symbols for the distinct study sizes N of the slices, smallest N first.
_SIZE_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "hexagon", "pentagon", "cross", "x")


def slices_figure(info: SliceInfo):
    """Normalised validation score against each protocol knob: one panel per knob, one trace per study.

    Colour: the study's similarity (Viridis, bar on the right); symbol: its size N; open symbols:
    pruned trials (scored at their last report); outlined star: each study's best.
    """
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=len(info.params),
        shared_yaxes=True,
        horizontal_spacing=0.03,
        subplot_titles=[LABELS.get(p, p) for p in info.params],
    )
    sims = [s.similarity for s in info.studies]
    lo, hi = (min(sims), max(sims)) if sims else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    sizes = sorted({s.n for s in info.studies})
    for s in info.studies:
        colour = sample_colorscale("Viridis", [(s.similarity - lo) / span])[0]
        symbol = _SIZE_SYMBOLS[sizes.index(s.n) % len(_SIZE_SYMBOLS)]
        symbols = [symbol + "-open" if p else symbol for p in s.pruned]
        hover = [
            f"{s.study}<br>trial {n} [{src}]"
            + (f" pruned at step {st}" if p else "")
            + f"<br>{s.metric} {sc:.4f} ({r:+.4f} vs best)"
            for n, src, p, st, sc, r in zip(s.numbers, s.sources, s.pruned, s.steps, s.score, s.relative)
        ]
        name = f"{s.study} (N {s.n}, sim {s.similarity:.2f})"
        for col, param in enumerate(info.params, start=1):
            x = s.values[param]
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=s.relative,
                    mode="markers",
                    name=name,
                    legendgroup=s.study,
                    showlegend=col == 1,
                    text=hover,
                    hoverinfo="text",
                    marker={"size": 9, "color": colour, "symbol": symbols, "line": {"width": 1.5, "color": colour}},
                ),
                row=1,
                col=col,
            )
            b = s.best_index
            fig.add_trace(
                go.Scatter(
                    x=[x[b]],
                    y=[s.relative[b]],
                    mode="markers",
                    legendgroup=s.study,
                    showlegend=False,
                    hoverinfo="text",
                    name=f"{s.study}: handed back",
                    text=[f"{s.study}: handed back, trial {s.numbers[b]}, {s.metric} {s.score[b]:.4f}"],
                    marker={
                        "size": 17,
                        "symbol": "star",
                        "color": "rgba(0,0,0,0)",
                        "line": {"width": 2, "color": colour},
                    },
                ),
                row=1,
                col=col,
            )
    if info.studies:  # the similarity colour bar (an invisible trace carries it)
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                showlegend=False,
                hoverinfo="skip",
                marker={
                    "color": [lo, hi],
                    "colorscale": "Viridis",
                    "cmin": lo,
                    "cmax": lo + span,
                    "showscale": True,
                    "colorbar": {"title": "similarity", "x": 1.02},
                },
            ),
            row=1,
            col=1,
        )
    for col, param in enumerate(info.params, start=1):
        fig.update_xaxes(title=LABELS.get(param, param), row=1, col=col)
    metrics = sorted({s.metric.replace("_", " ") for s in info.studies}) or ["score"]
    fig.update_yaxes(title=f"validation {' / '.join(metrics)} − study best", row=1, col=1)
    fig.update_layout(
        title={
            "text": _title(
                f"accuracy along protocol slices ({len(info.studies)} studies; star: handed back, open: pruned, symbol: N)"
            ),
            "x": 0.01,
        },
        template="plotly_white",
        height=480,
        margin={"l": 60, "r": 30, "t": 80, "b": 60},
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


def write_surface_html(model: SurfaceModel, path: str | Path, *, grid: int = 25, storage: str | None = None) -> Path:
    """A self-contained HTML page (plotly inline): the overview, surface + contour per parameter, and,
    with the studies' Optuna ``storage`` URL, the accuracy along protocol slices (``slices_figure``).

    Studies missing from the storage, or a storage that cannot be read, are noted on the page.
    """
    import plotly.io as pio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = [surface_overview_figure(model, grid=grid)]
    figures += [param_figure(surface_grid_info(model, p, grid)) for p in model.gps_]
    slice_notes: list[str] = []
    if storage is not None:
        slices = load_slice_info(model.points_, storage)
        slice_notes = slices.notes
        if slices.studies:
            figures.append(slices_figure(slices))
    parts = [pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    notes = ""
    if model.few_points_:
        notes = f"<p><b>Only {model.n_points_} point(s)</b>: the fit is unreliable and priors from it are widened.</p>"
    if storage is not None:
        from html import escape

        notes += (
            f"<p>Protocol slices: each study's finished search trials, score normalised as {escape(NORMALISATION)}.</p>"
        )
        notes += "".join(f"<p class='slice-note'>{escape(n)}</p>" for n in slice_notes)
    rows = "".join(
        f"<tr><td>{p.study}</td><td>{p.n}</td><td>{p.similarity:.3f}</td><td>{p.protocol['log10_elr']:.2f}</td>"
        f"<td>{p.protocol['freeze_frac']:.2f}</td><td>{p.protocol['reinit_frac']:.2f}</td>"
        f"<td>{p.protocol['head_lr_mult']:.3g}</td><td>{schedule_words(p.best)}</td>"
        f"<td>{p.score:.3f} ({p.metric})</td></tr>"
        for p in model.points_
    )
    html = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>autotransfer surface</title></head><body"
        " style='font-family:sans-serif'>"
        f"<h1>Surface of optimal protocols</h1><p>{model.n_points_} studies; model(s): {', '.join(model.model_)}.</p>"
        f"{notes}{''.join(parts)}"
        "<h2>Measured points</h2><table border='1' cellpadding='4' style='border-collapse:collapse'>"
        "<tr><th>study</th><th>N</th><th>similarity</th><th>log10 ELR</th><th>freeze</th><th>reinit</th>"
        f"<th>head lr x</th><th>schedule</th><th>best val score</th></tr>{rows}</table></body></html>"
    )
    path.write_text(html)
    return path


def store_path_for(study) -> Path:
    """The surface store a study refers to: its ``surface:PATH`` prior, else ``$AUTOTRANSFER_SURFACE``,
    else ``studies/surface.json``."""
    from autotransfer.search.study import read_settings

    spec = read_settings(study).prior_spec
    if spec.kind == "surface":
        return Path(str(spec.path))
    return active_store()


def surface_figure(study: optuna.Study):
    """Dashboard / report hook: the surface of this study's model with this study marked, or ``None``.

    ``None`` when no store exists or it has no point for the study's model.
    """
    from autotransfer.search.study import read_attr, read_settings

    store = SurfaceStore(store_path_for(study))
    if not store.exists():
        return None
    points: list[SurfacePoint] = store.load(model=read_settings(study).model)
    if not points:
        return None
    mark = None
    own = study.user_attrs.get(POINT_ATTR)
    profile = read_attr(study, "profile")
    if own:
        mark = (float(own["log10_n"]), float(own["similarity"]))
    elif profile and profile.get("size"):
        mark = (math.log10(int(profile["size"]["images"])), float(profile["similarity"]))
    return surface_overview_figure(SurfaceModel(PARAMS).fit(points), grid=20, mark=mark)
