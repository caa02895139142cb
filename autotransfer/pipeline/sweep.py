"""Sweeps: one study per (target, size, seed), run or resumed, each recorded as a surface point."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from autotransfer.core.errors import UserError
from autotransfer.core.settings import StudySettings
from autotransfer.surface.store import DEFAULT_STORE, SurfacePoint, SurfaceStore

__all__ = [
    "SweepSpec",
    "SweepEntry",
    "SweepResult",
    "load_sweep_spec",
    "plan_sweep",
    "run_sweep",
    "sweep_from_options",
    "surface_job",
]

#: Spec keys that are not StudySettings fields.
_SPEC_KEYS = {"targets", "sizes", "model", "seeds", "trials", "storage", "store"}
#: StudySettings fields a spec may not set (the sweep sets them per study, or they are derived).
_DERIVED = {"target", "n", "seed", "fingerprint", "metric", "num_classes", "n_train"}


@dataclass
class SweepSpec:
    """A sweep: targets x sizes x seeds for one model, plus study settings shared by every study.

    Attributes:
        targets: dataset specs (``builtin:digits``, ``folder:PATH``...).
        sizes: requested target sizes N (capped at each dataset's size).
        model: the source model spec.
        seeds: the seeds (a YAML integer ``K`` means seeds ``0 .. K-1``).
        trials: finished search trials per study.
        settings: other ``StudySettings`` fields (resolution, steps, batch_size, views, ...).
        storage, store: the study storage URL and surface store path (``None``: defaults).
    """

    targets: list[str]
    sizes: list[int]
    model: str
    seeds: list[int] = field(default_factory=lambda: [0])
    trials: int = 20
    settings: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    store: str | None = None

    def base_settings(self) -> StudySettings:
        return StudySettings(model=self.model, trials=self.trials, **self.settings)


def _int_list(value: Any, key: str, path: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and key == "seeds":
        return list(range(value))
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise UserError(f"sweep spec {path}: {key} must be a list of integers, but got {value!r}") from None
    if not out or any(v < 1 and key == "sizes" for v in out):
        raise UserError(f"sweep spec {path}: {key} must be non-empty positive integers, but got {value!r}")
    return out


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read a YAML sweep spec (``yaml.safe_load``): keys ``targets``, ``sizes``, ``model``,
    ``seeds`` (count or list), ``trials``, optional ``storage``/``store``, and any
    ``StudySettings`` field (``resolution``, ``steps``, ``batch_size``, ``views``, ``device``...)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec {str(path)!r} does not exist: give the path of a YAML file (see studies/)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"sweep spec {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"sweep spec {str(path)!r} must be a mapping of keys, but got {type(raw).__name__}")
    settable = {f.name for f in fields(StudySettings)} - _DERIVED
    unknown = sorted(set(raw) - _SPEC_KEYS - settable)
    if unknown:
        raise UserError(f"sweep spec {str(path)!r} has unknown keys {unknown!r}: use {sorted(_SPEC_KEYS | settable)}")
    for key in ("targets", "sizes", "model"):
        if key not in raw:
            raise UserError(f"sweep spec {str(path)!r} needs a {key!r} key")
    targets = raw["targets"]
    targets = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [str(t) for t in targets]
    spec = SweepSpec(
        targets=[t for t in targets if t],
        sizes=_int_list(raw["sizes"], "sizes", str(path)),
        model=str(raw["model"]),
        seeds=_int_list(raw.get("seeds", 1), "seeds", str(path)),
        trials=int(raw.get("trials", 20)),
        settings={k: v for k, v in raw.items() if k in settable and k not in ("model", "trials")},
        storage=raw.get("storage"),
        store=raw.get("store"),
    )
    if not spec.targets:
        raise UserError(f"sweep spec {str(path)!r}: targets must name at least one dataset")
    spec.base_settings()  # validates the settings (one-line UserError on a bad value)
    return spec


@dataclass
class SweepEntry:
    """One planned study of a sweep and, once run, its result."""

    target: str
    size: int
    n: int
    seed: int
    study: str
    notes: list[str] = field(default_factory=list)
    status: str = "planned"  # planned | done | skipped | failed
    point: SurfacePoint | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "size": self.size,
            "n": self.n,
            "seed": self.seed,
            "study": self.study,
            "status": self.status,
            "notes": list(self.notes),
            "seconds": self.seconds,
            "point": None if self.point is None else self.point.to_dict(),
        }


@dataclass
class SweepResult:
    entries: list[SweepEntry]
    store: str
    storage: str

    def to_dict(self) -> dict[str, Any]:
        from autotransfer.search.storage import masked_url

        return {
            "store": self.store,
            "storage": masked_url(self.storage),
            "studies": [e.to_dict() for e in self.entries],
        }


def plan_sweep(
    targets: Sequence[str], sizes: Sequence[int], model: str, seeds: Sequence[int], base: StudySettings
) -> list[SweepEntry]:
    """The studies of a sweep, sizes capped at each dataset's size (noted); duplicates after capping dropped."""
    from autotransfer.data import load_dataset
    from autotransfer.search.run import default_study_name

    if not targets or not sizes or not seeds:
        raise UserError(
            f"a sweep needs targets, sizes and seeds, but got targets={list(targets)!r},"
            f" sizes={list(sizes)!r}, seeds={list(seeds)!r}"
        )
    entries: list[SweepEntry] = []
    seen: set[str] = set()
    for target in targets:
        total = len(load_dataset(target, require_labels=True))
        for size in sizes:
            if size < 4:
                raise UserError(f"sweep sizes must be at least 4 images, but got {size!r}")
            n = min(int(size), total)
            notes = [f"size {size} capped at {total} (all that {target} has)"] if n < size else []
            for seed in seeds:
                settings = replace(base, target=target, model=model, n=n, seed=int(seed))
                name = default_study_name(settings)
                if name in seen:
                    continue  # two sizes capped onto the same study
                seen.add(name)
                entries.append(SweepEntry(target=target, size=int(size), n=n, seed=int(seed), study=name, notes=notes))
    return entries


def run_sweep(
    targets: Sequence[str],
    sizes: Sequence[int],
    model: str,
    seeds: Sequence[int] = (0,),
    *,
    trials: int = 20,
    storage: str | None = None,
    store_path: str | Path = DEFAULT_STORE,
    base_settings: StudySettings | None = None,
    ui=None,
    on_study: Callable[[int, int, SweepEntry], None] | None = None,
    export_dir: str | Path = "studies/exports",
    runs_dir: str | Path = "studies/runs",
    keep_going: bool = False,
) -> SweepResult:
    """Run (or resume) one study per (target, size, seed) and record each as a surface point.

    Studies are named ``<target>-<model>-n<N>-s<seed>`` (``default_study_name``); a finished
    study resumes with nothing left to run, so re-running a sweep only runs what is missing.
    ``ui`` (``autotransfer.search.progress``) gets a ``stage`` line per study with the sweep's
    progress (``study k/K``); ``on_study(k, K, entry)`` is called after each. With
    ``keep_going``, a study that raises is marked ``failed`` and the sweep goes on.
    """
    from autotransfer.pipeline.tune import tune
    from autotransfer.search.progress import NullUI
    from autotransfer.search.storage import open_storage, storage_location
    from autotransfer.search.study import load_study
    from autotransfer.surface.store import record_study

    ui = ui or NullUI()
    base = replace(base_settings or StudySettings(), model=model, trials=int(trials))
    entries = plan_sweep(targets, sizes, model, seeds, base)
    store = SurfaceStore(store_path)
    url = storage_location(storage)
    started = time.perf_counter()
    for k, entry in enumerate(entries, start=1):
        elapsed = time.perf_counter() - started
        eta = f", ~{elapsed / (k - 1) * (len(entries) - k + 1) / 60:.1f} min left" if k > 1 else ""
        ui.stage(f"sweep study {k}/{len(entries)}: {entry.study}{eta}")
        for note in entry.notes:
            ui.note(note)
        t0 = time.perf_counter()
        settings = replace(base, target=entry.target, n=entry.n, seed=entry.seed)
        try:
            tune(settings, study_name=entry.study, storage=url, export_dir=export_dir, runs_dir=runs_dir, ui=ui)
            study = load_study(entry.study, open_storage(url))
            entry.point = record_study(study, store)
            entry.status = "done" if entry.point is not None else "skipped"
            if entry.point is None:
                entry.notes.append("no transfer trial completed: no surface point recorded")
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as err:  # noqa: BLE001 - a failed study must not lose the sweep
            if not keep_going:
                raise
            entry.status = "failed"
            entry.notes.append(f"failed: {type(err).__name__}: {err}")
        entry.seconds = time.perf_counter() - t0
        if on_study:
            on_study(k, len(entries), entry)
    return SweepResult(entries=entries, store=str(store.path), storage=url)


def sweep_from_options(
    *,
    spec: str | Path | None = None,
    targets: str | None = None,
    sizes: str | None = None,
    model: str | None = None,
    seeds: int = 1,
    trials: int | None = None,
) -> SweepSpec | None:
    """The sweep ``autotransfer surface`` asks for: a YAML ``spec``, or comma-separated
    ``targets`` x ``sizes`` for ``model`` with seeds ``0 .. seeds-1``; ``None`` when neither
    (only fit and draw the recorded points). A half-given sweep is a one-line ``UserError``."""
    if spec:
        return load_sweep_spec(spec)
    if not (targets or sizes):
        return None
    if not (targets and sizes and model):
        raise UserError("a sweep needs --targets, --sizes and --model (or --spec FILE)")
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated integers, but got {sizes!r}") from None
    return SweepSpec(
        targets=[t.strip() for t in targets.split(",") if t.strip()],
        sizes=size_list,
        model=model,
        seeds=list(range(seeds)),
        trials=trials or 20,
    )


def surface_job(
    sweep: SweepSpec | None,
    *,
    model: str | None = None,
    trials: int | None = None,
    overrides: dict[str, Any] | None = None,
    storage: str | None = None,
    store: str | Path | None = None,
    html: str | Path | None = None,
    ui=None,
) -> dict[str, Any]:
    """``autotransfer surface``: run (or resume) ``sweep`` when given, then load the surface's
    points for the model and, with ``html``, write the fitted surface as a page. ``overrides``
    (``StudySettings`` fields, ``None`` values ignored) apply to every study. Returns the sweep's
    summary (``studies``...) with ``points`` (how many) and ``html`` (the page written) added."""
    from autotransfer.report.surface_plots import write_surface_html
    from autotransfer.search.storage import storage_location
    from autotransfer.surface import SurfaceModel

    store_path = store or (sweep.store if sweep else None) or DEFAULT_STORE
    out: dict[str, Any] = {}
    if sweep is not None:
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        result = run_sweep(
            sweep.targets,
            sweep.sizes,
            sweep.model,
            sweep.seeds,
            trials=trials or sweep.trials,
            storage=storage or sweep.storage,
            store_path=store_path,
            base_settings=replace(sweep.base_settings(), **given),
            ui=ui,
        )
        out = result.to_dict()
    points = SurfaceStore(store_path).load(model=(sweep.model if sweep else model))
    if html:
        if not points:
            raise UserError(f"surface {str(store_path)!r} has no points to draw: run a sweep first")
        slices_storage = storage_location(storage or (sweep.storage if sweep else None))
        out["html"] = str(write_surface_html(SurfaceModel().fit(points), html, storage=slices_storage))
    out["points"] = len(points)
    out["store"] = str(store_path)
    return out
