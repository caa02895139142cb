"""Creating, resuming and reading autotransfer studies (an Optuna study plus its provenance)."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import socket
import time
from dataclasses import replace
from typing import Any, Iterable, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import Protocol, ProtocolSpace
from autotransfer.core.schema import ATTR, CONTROL_ATTR, VAL_LOSS_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.search.pruning import NoiseAwarePruner, rung_steps
from autotransfer.search.sampler import PriorSampler, default_startup
from autotransfer.search.storage import storage_name

__all__ = [
    "make_sampler",
    "make_pruner",
    "open_study",
    "RUNG_FRACTIONS",
    "create_study",
    "load_study",
    "JOIN_WAIT",
    "READ_WAIT",
    "study_exists",
    "read_settings",
    "read_space",
    "read_attr",
    "check_compatible",
    "resume_overrides",
    "search_trials",
    "control_trials",
    "best_transfer_trial",
    "best_by_validation",
    "transfer_trials",
    "rank_key",
    "package_versions",
    "FINISHED",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

_VERSIONED = ("autotransfer", "torch", "torchvision", "timm", "optuna", "pot", "scikit-learn", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a trial's result (recorded; checked by workers)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def make_sampler(seed: int, config: dict[str, Any] | None = None) -> PriorSampler:
    """The study's sampler: prior-centred start-up draws, then multivariate TPE (``sampler.py``).

    ``config`` is the study's ``sampler`` attribute (``startup``, ``centre``, ``spread``), written
    when the study is created so that every worker draws around the same prior; ``None``: five
    uniform start-up draws.
    """
    config = config or {}
    return PriorSampler(
        seed,
        startup=int(config.get("startup", 5)),
        centre=config.get("centre"),
        spread=config.get("spread"),
    )


#: Where the pruner compares trials, as fractions of the budget (docs/design.md, "Pruning"): late
#: enough that trained protocols have separated from chance and from the head's early speed.
RUNG_FRACTIONS = (1 / 3, 2 / 3)
#: The pruner's margin, in standard errors of the difference of two validation scores.
PRUNE_Z = 1.0


def make_pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    """Noise-aware successive halving over steps (``pruning.py``; ``NopPruner`` with --no-prune).

    DESIGN: with HyperbandPruner TPE only learns within a bracket and wants ~10 start-up trials
    per bracket, so small budgets prefer one successive-halving bracket.
    """
    if not settings.prune or not settings.steps:
        return optuna.pruners.NopPruner()
    eval_every = int(settings.eval_every or 1)
    n_eff = settings.val_effective or settings.val_images
    return NoiseAwarePruner(rung_steps(int(settings.steps), eval_every, RUNG_FRACTIONS), n_eff, z=PRUNE_Z)


#: Seconds a process that joins a study (``tune`` resuming it or losing the race to create it, a
#: worker) waits for the settings of a study that another process is still creating.
JOIN_WAIT = float(os.environ.get("AUTOTRANSFER_JOIN_WAIT", "120"))
#: Seconds a command that only reads a study waits for them.
READ_WAIT = 10.0
#: Seconds a bare study (no attribute, no trial: optuna made it a moment ago and its creator has
#: not marked it yet) is given before it counts as a study autotransfer did not make.
_BARE_GRACE = 1.0


def open_study(
    name: str, storage: optuna.storages.BaseStorage, settings: StudySettings, *, reseed: bool = False
) -> optuna.Study:
    """Load a study with the sampler and pruner its stored attributes ask for.

    ``reseed``: a process that joins the study (a worker, a ``tune`` that resumes it) draws its
    own start-up protocols (with the study's seed in every process, all of them would propose the
    same parameters).
    """
    study = load_study(name, storage)
    sampler = make_sampler(settings.seed, read_attr(study, "sampler"))
    if reseed:
        sampler.reseed_rng()
    return load_study(name, storage, sampler=sampler, pruner=make_pruner(settings))


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return name in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}


def load_study(
    name: str, storage: optuna.storages.BaseStorage, *, sampler=None, pruner=None, wait: float = READ_WAIT
) -> optuna.Study:
    """Load an existing study, or raise a one-line ``UserError`` that names the storage (listing
    its studies when ``name`` is not among them).

    A study whose settings are not written yet is being created by another process
    (``create_study`` writes them last): wait up to ``wait`` seconds for them, then refuse in
    one line saying who began creating it.
    """
    start = time.monotonic()
    while True:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        if name not in names:
            known = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "none"
            raise UserError(f"no study named {name!r} in storage {storage_name(storage)} (known studies: {known})")
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        attrs = study.user_attrs
        if ATTR["settings"] in attrs:
            return study
        waited = time.monotonic() - start
        creating = attrs.get(ATTR["creating"])
        if creating is None:
            bare = not attrs and not study.get_trials(deepcopy=False)
            if not (bare and waited < _BARE_GRACE):
                raise UserError(
                    f"study {name!r} in storage {storage_name(storage)} was not made by autotransfer (it has no"
                    " settings attribute): pass the name of a study that `autotransfer tune` made"
                )
        elif waited >= wait:
            who = creating.get("by", "another run") if isinstance(creating, dict) else "another run"
            when = creating.get("at", "?") if isinstance(creating, dict) else "?"
            raise UserError(
                f"study {name!r} in storage {storage_name(storage)} is half-created: {who} began creating it at"
                f" {when} and its settings were never written (waited {wait:.0f} s): wait for that run to finish"
                f" estimating, or delete the study (optuna delete-study --study-name {name}) and run tune again"
            )
        time.sleep(0.25)


def create_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    settings: StudySettings,
    *,
    profile: dict[str, Any] | None,
    prior: dict[str, Any] | None,
    space: ProtocolSpace,
    enqueue: Iterable[tuple[Protocol, dict[str, Any]]] = (),
    spread: dict[str, float] | None = None,
) -> optuna.Study:
    """Create the study, store its provenance, and enqueue fixed protocols (once, at creation).

    The sampler's start-up draws centre on ``prior["centre"]`` with ``spread`` (``sampler.py``);
    their number follows the search budget left after the enqueued non-control protocols.
    The study searches ``settings.schedules``, whatever ``space`` says; an enqueued protocol
    whose schedule is not among them runs the first of them (``Protocol.within_schedules``).

    Another process may create ``name`` first: optuna's ``DuplicatedStudyError`` then says so
    (``pipeline.tune`` joins that study). The settings are written last, after every other
    attribute and the enqueued protocols, and the ``creating`` mark first: a study that has
    settings is complete, and ``load_study`` waits for the settings of one being created.
    """
    space = replace(space, schedules=settings.schedules)
    enqueue = [(p.within_schedules(space.schedules), attrs) for p, attrs in enqueue]
    centre = (prior or {}).get("centre")
    enqueued = sum(1 for _, attrs in enqueue if CONTROL_ATTR not in attrs)
    sampler_config = {
        "startup": default_startup(settings.trials, enqueued),
        "centre": centre,
        "spread": dict(spread or {}) if centre else {},
    }
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(settings.seed, sampler_config),
        pruner=make_pruner(settings),
    )
    study.set_user_attr(
        ATTR["creating"], {"by": f"{socket.gethostname()}:{os.getpid()}", "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    )
    study.set_user_attr(ATTR["sampler"], json.loads(json.dumps(sampler_config, default=_jsonable)))
    study.set_user_attr(ATTR["space"], space.to_dict())
    study.set_user_attr(ATTR["versions"], package_versions())
    if profile is not None:
        study.set_user_attr(ATTR["profile"], json.loads(json.dumps(profile, default=_jsonable)))
    if prior is not None:
        study.set_user_attr(ATTR["prior"], json.loads(json.dumps(prior, default=_jsonable)))
    for protocol, attrs in enqueue:
        study.enqueue_trial(protocol.to_dict(), user_attrs=attrs)
    study.set_user_attr(ATTR["settings"], settings.to_dict())  # last: the study is complete
    return study


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def read_attr(study: optuna.Study, key: str) -> Any:
    return study.user_attrs.get(ATTR[key])


def read_settings(study: optuna.Study) -> StudySettings:
    """The study's recorded settings; one recorded before schedules existed searched one-stage only."""
    return StudySettings.from_dict({"schedules": ["one-stage"], **study.user_attrs[ATTR["settings"]]})


def read_space(study: optuna.Study) -> ProtocolSpace:
    return ProtocolSpace.from_dict(study.user_attrs[ATTR["space"]])


_MUST_MATCH = ("target", "model", "n", "seed", "resolution", "batch_size", "optimizer", "augment", "views")


def check_compatible(study: optuna.Study, settings: StudySettings) -> None:
    """Refuse to resume a study with other data or another model: one line saying what differs."""
    stored = read_settings(study)
    if settings.fingerprint and stored.fingerprint and settings.fingerprint != stored.fingerprint:
        raise UserError(
            f"study {study.study_name!r} was made on other data (dataset fingerprint"
            f" {stored.fingerprint[:12]} != {settings.fingerprint[:12]} for {settings.target!r}):"
            " use another --study name, or the same data"
        )
    for key in _MUST_MATCH:
        a, b = getattr(stored, key), getattr(settings, key)
        if a != b:
            raise UserError(
                f"study {study.study_name!r} was made with {key}={a!r}, but this run asks for"
                f" {key}={b!r}: use another --study name, or the same settings"
            )


#: Options a resumed study keeps from its record, whatever this run asks (the search must stay one
#: search: one budget, one prior, one pruning rule, one pick rule).
_RECORDED_WIN = ("steps", "prior", "prune", "pick", "schedules")


def resume_overrides(stored: StudySettings, asked: StudySettings, *, warm_start: str | None = None) -> str | None:
    """One line saying which of this run's options the resumed study's recorded settings override
    (``--steps``, ``--prior``, ``--prune``, ``--pick``, ``--schedules``, and ``--warm-start``, which only a new study
    enqueues), or ``None`` when they agree. ``asked`` is this run's settings, resolved on the data."""

    def shown(key: str, value: Any) -> str:
        if key == "schedules":
            return ",".join(value)
        return ("on" if value else "off") if key == "prune" else str(value)

    differ = [
        f"--{key} {shown(key, getattr(stored, key))} (this run: {shown(key, getattr(asked, key))})"
        for key in _RECORDED_WIN
        if getattr(asked, key) is not None and getattr(stored, key) != getattr(asked, key)
    ]
    if warm_start:
        differ.append(f"no --warm-start (this run: {warm_start}; protocols are enqueued only when a study is created)")
    if not differ:
        return None
    return (
        "resuming with the study's recorded settings, not this run's: "
        + ", ".join(differ)
        + ": use another --study to search with them"
    )


def _is_control(trial: FrozenTrial) -> bool:
    return CONTROL_ATTR in trial.user_attrs


def search_trials(study: optuna.Study, states: tuple[TrialState, ...] = FINISHED) -> list[FrozenTrial]:
    """Finished search trials (COMPLETE or PRUNED), controls excluded: what ``--trials`` counts."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if not _is_control(t)]


def control_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed control trials (from scratch, linear probe)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _is_control(t)]


def best_transfer_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial the study hands back: its recorded pick (``pick.py``) once ``tune`` made one,
    else the best COMPLETE transfer trial by validation (``best_by_validation``)."""
    pick = study.user_attrs.get(ATTR["pick"]) or {}
    number = pick.get("trial")
    if number is not None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number == number:
                return t
    return best_by_validation(study)


def best_by_validation(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial that transfers (from-scratch controls excluded), by ``rank_key``."""
    return max(transfer_trials(study), key=rank_key, default=None)


def transfer_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials with a score, from-scratch controls excluded: what a pick chooses from."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(CONTROL_ATTR) != "scratch" and t.value is not None
    ]


def rank_key(trial: FrozenTrial) -> tuple[float, float, int]:
    """How trials rank as the study's best: the higher score, then the lower validation loss, then
    the earlier trial (the larger key wins)."""
    loss = trial.user_attrs.get(VAL_LOSS_ATTR)
    score = cast(float, trial.value)  # ranked trials are transfer_trials: all scored
    return (score, -loss if isinstance(loss, (int, float)) else -math.inf, -trial.number)
