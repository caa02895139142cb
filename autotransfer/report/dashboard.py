"""optuna-dashboard for autotransfer studies: attach autotransfer's figures and notes, then serve."""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
from collections.abc import Sequence
from typing import Callable

import optuna
from optuna.storages import BaseStorage

from autotransfer.core.errors import UserError
from autotransfer.core.schema import ATTR
from autotransfer.report import figures, plots
from autotransfer.report.model_choice import MODEL_CHOICE_HEADERS, model_choice_table, study_model_choice
from autotransfer.search.storage import open_existing_storage, storage_name
from autotransfer.search.study import load_study, read_settings

__all__ = [
    "VIEW_IDS",
    "open_dashboard_storage",
    "autotransfer_studies",
    "study_views",
    "study_note",
    "attach_views",
    "check_port",
    "exposure_warning",
    "dashboard_url",
    "run_dashboard",
]

#: Fixed ``graph_object_id`` of each view: attaching again replaces a figure instead of adding one.
VIEW_IDS = {
    "divergence": "autotransfer-divergence",
    "protocol": "autotransfer-protocol-score",
    "controls": "autotransfer-controls",
    "prior": "autotransfer-prior-vs-found",
    "surface": "autotransfer-surface",
}


def open_dashboard_storage(url: str | None = None) -> BaseStorage:
    """Open an existing storage to read (no heartbeats); a missing file is a one-line ``UserError``
    (``search.storage.open_existing_storage``: the dashboard, like every command that only looks at
    studies, never creates a database)."""
    return open_existing_storage(url)


def autotransfer_studies(storage: BaseStorage) -> list[str]:
    """Names of the studies in ``storage`` that autotransfer made (they carry its settings)."""
    return [
        s.study_name
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if ATTR["settings"] in s.user_attrs
    ]


def study_views(study: optuna.Study) -> dict[str, object]:
    """``{graph_object_id: plotly figure}`` of the views this study has data for."""
    views: dict[str, object] = {}
    div = figures.divergence_info(study)
    if div is not None:
        views[VIEW_IDS["divergence"]] = plots.divergence_figure(div)
    score = figures.protocol_score_info(study)
    if score.points:
        views[VIEW_IDS["protocol"]] = plots.protocol_score_figure(score)
    controls = figures.controls_info(study)
    if controls.scratch or controls.probe or controls.best_protocol is not None:
        views[VIEW_IDS["controls"]] = plots.controls_figure(controls)
    prior = figures.prior_found_info(study)
    if any(r.prior_pos is not None for r in prior.rows) and prior.best_trial is not None:
        views[VIEW_IDS["prior"]] = plots.prior_found_figure(prior)
    surface = plots.surface_figure(study)
    if surface is not None:
        views[VIEW_IDS["surface"]] = surface
    return views


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _num(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def study_note(study: optuna.Study) -> str:
    """The study note (markdown): task profile, divergence by depth, the prior against the best found."""
    settings = read_settings(study)
    overview = figures.overview_info(study)
    lines = [
        f"## autotransfer: {study.study_name}",
        "",
        f"Target `{settings.target}`, model `{settings.model}`, metric **{overview.metric}**;"
        f" budget {settings.steps} steps at {settings.resolution} px, batch {settings.batch_size}, {settings.optimizer}.",
        "",
        "### Result",
        "",
        f"- best protocol: trial {overview.best_trial}, validation {overview.metric} {_num(overview.val_score)};"
        f" held-out test {_num(overview.test_score)} (retrained on train+val)"
        + (f"; schedule {overview.schedule}" if overview.schedule is not None else ""),
    ]
    controls = figures.controls_info(study)
    lines.append(
        f"- controls: from scratch {_num(controls.best_scratch)} (best of {len(controls.scratch)}),"
        f" linear probe {_num(controls.best_probe)} (best of {len(controls.probe)})"
        + ("; **negative transfer**: from scratch beats every transfer protocol" if controls.negative_transfer else "")
    )
    lines.append(
        f"- search trials: {overview.n_search} finished ({overview.n_complete} complete, {overview.n_pruned} pruned),"
        f" {overview.n_failed} failed"
    )
    choice = study_model_choice(study)
    if choice:
        lines += ["", f"### Which model: {choice['chosen']} ({choice['reason']})", ""]
        lines += _table(MODEL_CHOICE_HEADERS, model_choice_table(choice))
    lines += ["", "### Task profile", ""]
    lines += _table(["", ""], [[label, value] for label, value in figures.profile_rows(study)])
    div = figures.divergence_info(study)
    if div is not None:
        lines += ["", f"### Divergence by depth ({div.method})", ""]
        lines += _table(figures.DIVERGENCE_HEADERS, figures.divergence_rows(div))
    prior = figures.prior_found_info(study)
    if prior.kind is not None:
        lines += [
            "",
            f"### Prior ({prior.kind}, {prior.quadrant}) against the best found (trial {prior.best_trial})",
            "",
        ]
        lines += _table(figures.PRIOR_FOUND_HEADERS, figures.prior_found_rows(prior, overview.metric))
        if prior.rationale:
            lines += ["", "Why this prior:", ""] + [f"- {line}" for line in prior.rationale]
    return "\n".join(lines) + "\n"


def attach_views(storage: str | BaseStorage | None = None, study_name: str | None = None) -> dict[str, list[str]]:
    """Save autotransfer's figures and note into each autotransfer study of ``storage``.

    Figures go through ``optuna_dashboard.save_plotly_graph_object`` with the fixed ids of
    ``VIEW_IDS`` (a second call replaces them); the note (``study_note``) is saved only when
    its text changed. With ``study_name`` only that study (a one-line ``UserError`` if it does
    not exist). Returns ``{study name: [graph object ids attached]}``.
    """
    from optuna_dashboard import get_note, save_note, save_plotly_graph_object

    store = storage if isinstance(storage, BaseStorage) else open_dashboard_storage(storage)
    if study_name is not None:
        load_study(study_name, store)  # one line naming the known studies when it is not there
        names = [study_name]
    else:
        names = autotransfer_studies(store)
    attached: dict[str, list[str]] = {}
    for name in names:
        study = optuna.load_study(study_name=name, storage=store)
        ids = []
        for graph_id, fig in study_views(study).items():
            save_plotly_graph_object(study, fig, graph_object_id=graph_id)
            ids.append(graph_id)
        note = study_note(study)
        if get_note(study) != note:
            save_note(study, note)
        attached[name] = ids
    return attached


def check_port(host: str, port: int) -> None:
    """Raise a one-line ``UserError`` unless ``host:port`` can be listened on (bind, then release)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError(f"--port must be an integer in 1..65535, but got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(
            f"--host {host!r} cannot be resolved ({err.strerror}): pass an address such as 127.0.0.1"
        ) from err
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # the dashboard's server (wsgiref) sets SO_REUSEADDR too: only a live listener conflicts
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is already in use: pass another --port (e.g. --port {port + 1 if port < 65535 else 8080})"
                    " or stop the program that uses it"
                ) from err
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}): pass another --host or --port") from err


def exposure_warning(host: str, port: int | None = None) -> str | None:
    """The warning to show when ``host`` makes the dashboard reachable from other machines (any
    address but a loopback one), else ``None``. The dashboard has no login, and it can edit and
    delete studies."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return None  # check_port refuses it
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    if all(address.is_loopback for address in addresses):
        return None
    where = "every interface" if any(a.is_unspecified for a in addresses) else f"{host}, beyond this machine"
    on_port = f" on port {port}" if port is not None else ""
    return (
        f"--host {host} binds {where}: the dashboard is unauthenticated, and anyone who can reach this machine"
        f"{on_port} can read, edit and delete the studies in this storage; keep the default --host 127.0.0.1"
        " (reach it through an SSH tunnel) unless every machine on this network is trusted"
    )


def dashboard_url(host: str, port: int, study: optuna.Study | None = None) -> str:
    """The dashboard's address, or one study's page in it."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}/dashboard"
    return base if study is None else f"{base}/studies/{study._study_id}"


def run_dashboard(
    storage: str | None = None,
    *,
    study_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    announce: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Attach autotransfer's views to the studies in ``storage``, then serve optuna-dashboard (blocks).

    Bad input, each a one-line ``UserError`` raised before anything is served: a storage that
    cannot be opened, a ``study_name`` that does not exist, a port already in use.
    ``announce`` receives one line per step (what was attached, where to point a browser);
    ``warn`` the warning of a ``host`` that other machines can reach (``exposure_warning``).
    """
    import optuna_dashboard

    say = announce or (lambda line: None)
    store = open_dashboard_storage(storage)
    study = load_study(study_name, store) if study_name is not None else None
    check_port(host, port)
    attached = attach_views(store, study_name)
    for name, ids in attached.items():
        say(f"attached {len(ids)} autotransfer figures and a note to study {name!r}")
    if not attached:
        say(f"no autotransfer study in {storage_name(store)}: serving the dashboard as it is")
    exposed = exposure_warning(host, port)
    if exposed is not None:
        (warn or logging.getLogger(__name__).warning)(exposed)
    say(f"optuna-dashboard on {dashboard_url(host, port, study)} (Ctrl-C stops it)")
    optuna_dashboard.run_server(store, host=host, port=port)
