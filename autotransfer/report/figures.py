"""The info step of the report: the numbers behind each figure, read from a study (no plotly).

Over 400 lines: one small info function per report figure, all reading the same study attributes;
the drawing is in plots.py.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotransfer.core.knobs import KNOBS
from autotransfer.core.protocol import SEARCHED, Protocol, schedule_words
from autotransfer.core.schema import CONTROL_ATTR, FREEZE_ATTR, NUM_GROUPS_ATTR, REINIT_ATTR, SOURCE_ATTR
from autotransfer.search.study import (
    best_transfer_trial,
    control_trials,
    read_attr,
    read_settings,
    read_space,
    search_trials,
)

__all__ = [
    "StudyOverview",
    "DivergenceInfo",
    "TrialPoint",
    "ProtocolScoreInfo",
    "ControlsInfo",
    "HistoryInfo",
    "ImportanceInfo",
    "PriorFoundRow",
    "PriorFoundInfo",
    "overview_info",
    "divergence_info",
    "protocol_score_info",
    "controls_info",
    "history_info",
    "importance_info",
    "prior_found_info",
    "profile_rows",
    "divergence_rows",
    "prior_found_rows",
    "PRIOR_FOUND_HEADERS",
    "DIVERGENCE_HEADERS",
    "MIN_IMPORTANCE_TRIALS",
]

#: Parameter importances need at least this many COMPLETE search trials (fANOVA on fewer
#: points says nothing).
MIN_IMPORTANCE_TRIALS = 3


class StudyOverview(NamedTuple):
    """Headline facts of a study (``schedule``: the best transfer protocol's schedule in words,
    ``core.protocol.describe_schedule``; ``None`` without one)."""

    name: str
    target: str
    model: str
    metric: str
    n_search: int
    n_complete: int
    n_pruned: int
    n_failed: int
    n_controls: int
    steps: int | None
    resolution: int
    batch_size: int
    best_trial: int | None
    val_score: float | None
    test_score: float | None
    schedule: str | None = None


class DivergenceInfo(NamedTuple):
    """Divergence by depth (``G`` groups, stem first) and where freezing stopped.

    Attributes:
        method: ``bn-w2``, ``mmd``...
        groups: ``(G,)`` group names.
        raw, excess: ``(G,)`` divergence and its excess over the same-domain reference.
        reference: ``(G,)`` or ``None`` when the model ships none.
        threshold: the excess at which the prior stops freezing (``bn-w2`` only, else ``None``).
        prior_freeze: ``f`` of the prior protocol, or ``None``.
        best_freeze: ``f`` of the best transfer protocol found, or ``None``.
    """

    method: str
    groups: list[str]
    raw: list[float]
    reference: list[float] | None
    excess: list[float]
    threshold: float | None
    prior_freeze: int | None
    best_freeze: int | None


class TrialPoint(NamedTuple):
    """One finished search trial: its protocol coordinates and score.

    ``score`` is the final value of a COMPLETE trial, or the last reported value of a PRUNED
    one (at ``step`` < budget, so not comparable with complete ones).
    """

    number: int
    state: str
    score: float
    step: int | None
    log10_elr: float
    freeze: int
    reinit: int
    freeze_frac: float
    reinit_frac: float
    source: str


class ProtocolScoreInfo(NamedTuple):
    """Protocol against score over the finished search trials (controls excluded)."""

    metric: str
    num_groups: int | None
    points: list[TrialPoint]
    best_number: int | None


class ControlsInfo(NamedTuple):
    """The controls against the best transfer protocol (validation scores, one per trial).

    Attributes:
        scratch, probe: ``[(trial number, score)]`` of each completed control trial.
        best_scratch, best_probe: the best of each kind (``None`` if none completed).
        best_protocol: validation score of the best transfer trial; ``best_trial`` its number.
        test_score: held-out test score of the best protocol retrained on train+val, if done.
        negative_transfer: from scratch beats every transfer protocol.
    """

    metric: str
    scratch: list[tuple[int, float]]
    probe: list[tuple[int, float]]
    best_scratch: float | None
    best_probe: float | None
    best_protocol: float | None
    best_trial: int | None
    test_score: float | None
    negative_transfer: bool


class HistoryInfo(NamedTuple):
    """Optimisation history of the COMPLETE search trials, in trial order."""

    metric: str
    numbers: list[int]
    values: list[float]
    best_so_far: list[float]
    sources: list[str]


class ImportanceInfo(NamedTuple):
    """fANOVA parameter importances over COMPLETE search trials (sum to 1), most important first.

    ``reason`` says why there are none (too few trials...), else ``None``.
    """

    params: list[str]
    importances: list[float]
    n_trials: int
    reason: str | None


class PriorFoundRow(NamedTuple):
    """One parameter: prior centre vs best found, and where each sits in the search range.

    ``prior_pos`` / ``found_pos`` are positions in ``[low, high]`` mapped to [0, 1] (log10 for
    log ranges; may fall outside for enqueued protocols); ``None`` for categorical values.
    """

    param: str
    prior: float | str | None
    found: float | str | None
    low: float | None
    high: float | None
    log: bool
    prior_pos: float | None
    found_pos: float | None


class PriorFoundInfo(NamedTuple):
    """The prior protocol against the best protocol the search found."""

    kind: str | None
    quadrant: str | None
    rows: list[PriorFoundRow]
    prior_integers: tuple[int, int] | None
    found_integers: tuple[int, int] | None
    num_groups: int | None
    best_trial: int | None
    prior_score: float | None
    found_score: float | None
    rationale: list[str]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _final(study: optuna.Study) -> dict[str, Any]:
    return read_attr(study, "final") or {}


def overview_info(study: optuna.Study) -> StudyOverview:
    """Headline facts: target, model, metric, trial counts, budget, best and test scores."""
    settings = read_settings(study)
    searched = search_trials(study, states=tuple(TrialState))
    best = best_transfer_trial(study)
    final = _final(study)
    test = final.get("test_score") if best is not None and final.get("trial") == best.number else None
    found = Protocol.from_dict(best.params) if best is not None else None
    return StudyOverview(
        name=study.study_name,
        target=settings.target,
        model=settings.model,
        metric=settings.metric or "score",
        n_search=sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in searched),
        n_complete=sum(t.state == TrialState.COMPLETE for t in searched),
        n_pruned=sum(t.state == TrialState.PRUNED for t in searched),
        n_failed=sum(t.state == TrialState.FAIL for t in searched),
        n_controls=len(control_trials(study)),
        steps=settings.steps,
        resolution=settings.resolution,
        batch_size=settings.batch_size,
        best_trial=None if best is None else best.number,
        val_score=None if best is None else _finite(best.value),
        test_score=_finite(test),
        schedule=None if found is None else schedule_words(found),
    )


def divergence_info(study: optuna.Study) -> DivergenceInfo | None:
    """The stored divergence profile by depth, or ``None`` when the study has none."""
    from autotransfer.prior.placement import BN_W2_SIMILARITY_SCALE, excess_threshold

    profile = read_attr(study, "profile") or {}
    div = profile.get("divergence")
    if not div:
        return None
    prior = read_attr(study, "prior") or profile.get("prior") or {}
    best = best_transfer_trial(study)
    nan = float("nan")
    return DivergenceInfo(
        method=str(div.get("method", "")),
        groups=[str(g) for g in div["groups"]],
        raw=[nan if v is None else float(v) for v in div["raw"]],
        reference=None if div.get("reference") is None else [nan if v is None else float(v) for v in div["reference"]],
        excess=[nan if v is None else float(v) for v in div["excess"]],
        threshold=excess_threshold(BN_W2_SIMILARITY_SCALE) if div.get("method") == "bn-w2" else None,
        prior_freeze=None if prior.get("freeze") is None else int(prior["freeze"]),
        best_freeze=None
        if best is None or best.user_attrs.get(FREEZE_ATTR) is None
        else int(best.user_attrs[FREEZE_ATTR]),
    )


def _integers(trial: FrozenTrial, num_groups: int | None) -> tuple[int, int] | None:
    if "freeze" in trial.user_attrs and "reinit" in trial.user_attrs:
        return int(trial.user_attrs[FREEZE_ATTR]), int(trial.user_attrs[REINIT_ATTR])
    if num_groups and {"freeze_frac", "reinit_frac"} <= set(trial.params):
        return Protocol.from_dict(trial.params).integers(num_groups)
    return None


def _num_groups(study: optuna.Study) -> int | None:
    for t in study.get_trials(deepcopy=False):
        if "num_groups" in t.user_attrs:
            return int(t.user_attrs[NUM_GROUPS_ATTR])
    profile = read_attr(study, "profile") or {}
    return int(profile["num_groups"]) if profile.get("num_groups") else None


def _score(trial: FrozenTrial) -> tuple[float | None, int | None]:
    """``(score, step)``: the value of a COMPLETE trial, the last report of a PRUNED one."""
    if trial.state == TrialState.COMPLETE:
        steps = trial.intermediate_values
        return _finite(trial.value), (max(steps) if steps else None)
    if trial.intermediate_values:
        step = max(trial.intermediate_values)
        return _finite(trial.intermediate_values[step]), step
    return None, None


def protocol_score_info(study: optuna.Study) -> ProtocolScoreInfo:
    """Each finished search trial's (log10 ELR, f, r) and score."""
    num_groups = _num_groups(study)
    points = []
    for t in search_trials(study):
        score, step = _score(t)
        ints = _integers(t, num_groups)
        if score is None or ints is None or "log10_elr" not in t.params:
            continue
        points.append(
            TrialPoint(
                number=t.number,
                state=t.state.name,
                score=score,
                step=step,
                log10_elr=float(t.params["log10_elr"]),
                freeze=ints[0],
                reinit=ints[1],
                freeze_frac=float(t.params.get("freeze_frac", math.nan)),
                reinit_frac=float(t.params.get("reinit_frac", math.nan)),
                source=str(t.user_attrs.get(SOURCE_ATTR, "search")),
            )
        )
    best = best_transfer_trial(study)
    best_number = best.number if best is not None and CONTROL_ATTR not in best.user_attrs else None
    settings = read_settings(study)
    return ProtocolScoreInfo(
        metric=settings.metric or "score", num_groups=num_groups, points=points, best_number=best_number
    )


def controls_info(study: optuna.Study) -> ControlsInfo:
    """Every control trial's score, the best of each kind, and the best transfer protocol's."""
    runs: dict[str, list[tuple[int, float]]] = {"scratch": [], "probe": []}
    for t in control_trials(study):
        value = _finite(t.value)
        kind = t.user_attrs.get(CONTROL_ATTR)
        if value is not None and kind in runs:
            runs[kind].append((t.number, value))
    best = best_transfer_trial(study)
    best_value = None if best is None else _finite(best.value)
    best_scratch = max((v for _, v in runs["scratch"]), default=None)
    final = _final(study)
    test = final.get("test_score") if best is not None and final.get("trial") == best.number else None
    return ControlsInfo(
        metric=read_settings(study).metric or "score",
        scratch=runs["scratch"],
        probe=runs["probe"],
        best_scratch=best_scratch,
        best_probe=max((v for _, v in runs["probe"]), default=None),
        best_protocol=best_value,
        best_trial=None if best is None else best.number,
        test_score=_finite(test),
        negative_transfer=best_scratch is not None and best_value is not None and best_scratch > best_value,
    )


def history_info(study: optuna.Study) -> HistoryInfo:
    """Values of the COMPLETE search trials in trial order, with the running best (maximised)."""
    numbers, values, best, sources = [], [], [], []
    running = -math.inf
    for t in sorted(search_trials(study, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        value = _finite(t.value)
        if value is None:
            continue
        running = max(running, value)
        numbers.append(t.number)
        values.append(value)
        best.append(running)
        sources.append(str(t.user_attrs.get(SOURCE_ATTR, "search")))
    return HistoryInfo(
        metric=read_settings(study).metric or "score", numbers=numbers, values=values, best_so_far=best, sources=sources
    )


def importance_info(study: optuna.Study, *, seed: int = 0) -> ImportanceInfo:
    """fANOVA importances (``optuna.importance``, seeded) over the COMPLETE search trials only.

    The controls are left out (they would read as huge effects of ``freeze_frac``/``reinit_frac``),
    and so are parameters the study held fixed (a one-value range).
    """
    complete = [t for t in search_trials(study, states=(TrialState.COMPLETE,)) if _finite(t.value) is not None]
    n = len(complete)
    if n < MIN_IMPORTANCE_TRIALS:
        return ImportanceInfo([], [], n, f"needs at least {MIN_IMPORTANCE_TRIALS} completed search trials, has {n}")
    # parameters every trial has, with one kind of distribution and more than one value
    varying = []
    for name in SEARCHED:
        dists = {_kind(t.distributions.get(name)) for t in complete}
        values = {t.params.get(name) for t in complete}
        if len(dists) == 1 and None not in values and len(values) > 1:
            varying.append(name)
    if not varying:
        return ImportanceInfo([], [], n, "no parameter varied across the completed search trials")
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for the copy
    try:
        copy = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(level)
    copy.add_trials([_widened(t, complete, varying) for t in complete])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(
                copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), params=varying
            )
    except (ValueError, RuntimeError) as err:
        return ImportanceInfo([], [], n, f"optuna could not compute importances: {err}")
    params = list(scores)
    return ImportanceInfo(params, [float(scores[p]) for p in params], n, None)


def _kind(dist: optuna.distributions.BaseDistribution | None) -> str:
    """Distributions that ``_widened`` can merge share a kind (float ranges differ only in bounds)."""
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return f"float(log={dist.log})"
    return repr(dist)


def _widened(trial: FrozenTrial, trials: list[FrozenTrial], names: list[str]) -> FrozenTrial:
    """``trial`` restricted to ``names``, each float range widened to hold every trial's value.

    Enqueued protocols (controls, survey protocols) may lie outside the centred ranges, which
    ``add_trials`` would refuse.
    """
    distributions = {}
    for name in names:
        dist = trial.distributions[name]
        if isinstance(dist, optuna.distributions.FloatDistribution):
            values = [float(t.params[name]) for t in trials]
            dist = optuna.distributions.FloatDistribution(min(dist.low, *values), max(dist.high, *values), log=dist.log)
        distributions[name] = dist
    return optuna.trial.create_trial(
        params={name: trial.params[name] for name in names},
        distributions=distributions,
        value=trial.value,
    )


def _position(value: float, low: float, high: float, log: bool) -> float:
    if log:
        value, low, high = math.log10(value), math.log10(low), math.log10(high)
    return 0.5 if high == low else (value - low) / (high - low)


def prior_found_info(study: optuna.Study) -> PriorFoundInfo:
    """The prior centre against the best found protocol, parameter by parameter, in the study's ranges.

    ``schedule`` and ``stage_frac`` have rows only when the study searches schedules (before
    schedules existed every study ran one-stage, and a one-stage-only study still does)."""
    prior = read_attr(study, "prior") or {}
    centre = prior.get("centre") or {}
    best = best_transfer_trial(study)
    found = Protocol.from_dict(best.params).to_dict() if best is not None and best.params else {}
    space = read_space(study)
    rows = []
    for name in space.suggested():
        p, f = centre.get(name), found.get(name)
        if KNOBS[name].kind == "choice":  # categorical: no position in a range
            rows.append(PriorFoundRow(name, p, f, None, None, False, None, None))
            continue
        rng = space.ranges[name]
        rows.append(
            PriorFoundRow(
                param=name,
                prior=None if p is None else float(p),
                found=None if f is None else float(f),
                low=rng.low,
                high=rng.high,
                log=rng.log,
                prior_pos=None if p is None else _position(float(p), rng.low, rng.high, rng.log),
                found_pos=None if f is None else _position(float(f), rng.low, rng.high, rng.log),
            )
        )
    num_groups = _num_groups(study)
    prior_trial = next(
        (t for t in search_trials(study, states=(TrialState.COMPLETE,)) if t.user_attrs.get(SOURCE_ATTR) == "prior"),
        None,
    )
    return PriorFoundInfo(
        kind=prior.get("kind"),
        quadrant=prior.get("quadrant"),
        rows=rows,
        prior_integers=None if prior.get("freeze") is None else (int(prior["freeze"]), int(prior.get("reinit", 0))),
        found_integers=None if best is None else _integers(best, num_groups),
        num_groups=num_groups,
        best_trial=None if best is None else best.number,
        prior_score=None if prior_trial is None else _finite(prior_trial.value),
        found_score=None if best is None else _finite(best.value),
        rationale=[str(line) for line in prior.get("rationale", [])],
    )


def _fmt(value: Any, spec: str = ".3g") -> str:
    """Text for a table cell: ``-`` for missing or non-finite numbers, ints as they are."""
    if value is None:
        return "-"
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return format(value, spec) if math.isfinite(value) else "-"


def profile_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """The task profile as ``(label, value)`` text rows (size, similarity, placement, scores)."""
    settings = read_settings(study)
    profile = read_attr(study, "profile")
    rows = [("target", settings.target), ("model", settings.model)]
    if not profile:
        rows.append(("task profile", "not recorded for this study"))
        return rows
    size = profile.get("size") or {}
    rows += [
        ("images", _fmt(size.get("images"))),
        ("classes", _fmt(size.get("classes"))),
        (
            "per class min / median / max",
            f"{_fmt(size.get('per_class_min'))} / {_fmt(size.get('per_class_median'), 'g')} / {_fmt(size.get('per_class_max'))}",
        ),
        ("imbalance (max/min)", _fmt(size.get("imbalance"), ".2f")),
        ("metric", str(profile.get("metric", settings.metric))),
        ("depth groups G", _fmt(profile.get("num_groups"))),
        ("similarity (0-1)", _fmt(profile.get("similarity"), ".3f")),
    ]
    tr = profile.get("transferability") or {}
    for key, label in (("logme", "LogME"), ("leep", "LEEP"), ("hscore", "H-score")):
        if tr.get(key) is not None:
            rows.append((label, _fmt(tr[key], ".4f")))
    place = profile.get("placement") or {}
    if place:
        rows += [
            ("log10 N", _fmt(place.get("log10_n"), ".3f")),
            ("size score", f"{_fmt(place.get('size_score'), '.3f')} ({place.get('size', '-')})"),
            ("quadrant", str(place.get("quadrant", "-"))),
            ("protocol family", str(place.get("protocol", "-"))),
        ]
    div = profile.get("divergence") or {}
    if div:
        rows.append(("divergence method", str(div.get("method", "-"))))
    for note in profile.get("notes", []):
        rows.append(("note", str(note)))
    return rows


#: Column headers of ``divergence_rows`` and ``prior_found_rows``.
DIVERGENCE_HEADERS = ["#", "group", "raw", "reference", "excess"]
PRIOR_FOUND_HEADERS = ["parameter", "prior", "search range", "found"]


def divergence_rows(info: DivergenceInfo) -> list[list[str]]:
    """One text row per depth group: index, name, raw, reference, excess."""
    ref: Sequence[float | None] = info.reference or [None] * len(info.groups)
    return [
        [str(i), g, _fmt(r, ".4g"), _fmt(s, ".4g"), _fmt(e, ".4g")]
        for i, (g, r, s, e) in enumerate(zip(info.groups, info.raw, ref, info.excess))
    ]


def prior_found_rows(info: PriorFoundInfo, metric: str) -> list[list[str]]:
    """One text row per parameter (prior, range, found), then ``(f, r)`` and both validation scores."""
    rows = []
    for r in info.rows:
        if r.low is None:  # categorical (bn_mode, schedule)
            rows.append([r.param, _fmt(r.prior), "", _fmt(r.found)])
        else:
            span = f"[{r.low:.3g}, {r.high:.3g}]" + (" log" if r.log else "")
            rows.append([r.param, _fmt(r.prior, ".4g"), span, _fmt(r.found, ".4g")])
    if info.prior_integers is not None:
        found = "-" if info.found_integers is None else f"f = {info.found_integers[0]}, r = {info.found_integers[1]}"
        prior = f"f = {info.prior_integers[0]}, r = {info.prior_integers[1]}"
        rows.append(["(f, r)", prior, f"G = {_fmt(info.num_groups)}", found])
    rows.append([f"validation {metric}", _fmt(info.prior_score, ".4g"), "", _fmt(info.found_score, ".4g")])
    return rows
