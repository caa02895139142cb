"""``estimate_task``: measure a target task (size, divergence by depth, transferability), derive the
priors ``tune`` would start from and forecast what it would hand back, without running a study;
``estimate_candidates``: score several models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from autotransfer.core.errors import UserError
from autotransfer.core.settings import PriorSpec

__all__ = ["TaskEstimate", "estimate_task", "estimate_candidates"]


@dataclass(frozen=True)
class TaskEstimate:
    """What ``estimate_task`` measured: the task ``profile`` (with its quadrant prior); when a
    surface of optimal protocols has points for the model, the ``surface_prior`` ``tune`` would
    start from (``None`` otherwise); and the ``forecast`` (``forecast.Forecast``) of the score of
    what ``tune`` would hand back for the job (``None``: not asked for)."""

    profile: Any
    surface_prior: Any = None
    forecast: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.profile.to_dict(),
            "surface_prior": self.surface_prior.to_dict() if self.surface_prior is not None else None,
            "forecast": self.forecast.to_dict() if self.forecast is not None else None,
        }


def estimate_task(
    target: str,
    model: str = "efficientnet_lite0",
    *,
    source: str | None = None,
    n: int | None = None,
    max_images: int = 1000,
    seed: int = 0,
    prior: str | None = None,
    progress: bool = False,
    resolution: int | None = None,
    trials: int | None = None,
    time_budget: float | str | None = None,
    forecast: bool = True,
) -> TaskEstimate:
    """Measure ``target`` (a dataset spec, labelled) against ``model`` (a model spec).

    ``n``: estimate on a stratified subsample of that many images. ``source``: a sample of the
    source domain (any dataset spec) for the source-based divergence. ``prior``: ``quadrant`` (the
    profile's prior only) or ``surface:PATH`` (also that surface's prior); ``None`` also shows the
    default surface's prior when it has points for the model. ``progress`` draws a bar on stderr.
    ``resolution``, ``trials``, ``time_budget``: the ``tune`` job to ``forecast`` (``tune``'s
    defaults and parsers: 64 px, 224 on a GPU; a duration such as ``10m``).
    """
    from autotransfer.core.budget import parse_duration
    from autotransfer.data import load_dataset, stratified_subsample
    from autotransfer.estimate import TaskEstimator
    from autotransfer.forecast import forecast_from_estimator
    from autotransfer.pipeline.options import tune_settings
    from autotransfer.surface import prior_for_task, store_named_by

    if prior is not None and PriorSpec.parse(prior).kind == "none":
        raise UserError(f"--prior must be quadrant or surface:PATH, but got {prior!r}")
    surface_path = store_named_by(prior, model)  # a missing store is refused before the estimate
    # the job tune would run, parsed as tune parses it (bad values are refused before the estimate)
    budget_s = parse_duration(time_budget) if time_budget is not None else None
    job = tune_settings(target, {"model": model, "n": n, "seed": seed, "resolution": resolution, "trials": trials})
    dataset = load_dataset(target, require_labels=True)
    if n is not None:
        dataset = stratified_subsample(dataset, n, seed=seed)
    estimator = TaskEstimator(max_images=max_images, seed=seed, progress=progress)
    profile = estimator.fit(dataset, model, source=source)
    surface = prior_for_task(surface_path, profile) if surface_path is not None else None
    expected = None
    if forecast:
        expected = forecast_from_estimator(
            estimator,
            len(dataset),
            model=profile.model,
            resolution=job.resolution,
            trials=job.trials if trials is not None or budget_s is None else None,
            time_budget_s=budget_s,
        )
    return TaskEstimate(profile, surface, expected)


def estimate_candidates(
    target: str,
    models: str,
    *,
    n: int | None = None,
    max_images: int = 1000,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Score the models of ``models`` (``--models A,B,C`` or ``auto``: ``backbones.parse_models``)
    on ``target`` (``estimate.candidates.score_candidates``), their training speed measured at
    the resolution and batch a ``tune`` of this target would use on this device (64 px and 32
    on CPU, ``GPU_RESOLUTION`` and ``GPU_BATCH_SIZE`` on a GPU). Returns the ``CandidateSet``.
    An unknown model name is a one-line ``UserError`` before anything is measured."""
    from autotransfer.backbones import parse_models
    from autotransfer.core.settings import StudySettings
    from autotransfer.data import load_dataset, stratified_subsample
    from autotransfer.estimate.candidates import score_candidates
    from autotransfer.pipeline.options import GPU_BATCH_SIZE, GPU_RESOLUTION
    from autotransfer.train.config import resolve_device

    specs = parse_models(models)
    run_device = resolve_device(device, what="--device")
    defaults = StudySettings()
    on_gpu = run_device.type == "cuda"
    resolution = GPU_RESOLUTION if on_gpu else defaults.resolution
    batch_size = GPU_BATCH_SIZE if on_gpu else defaults.batch_size
    dataset = load_dataset(target, require_labels=True)
    if n is not None:
        dataset = stratified_subsample(dataset, n, seed=seed)
    return score_candidates(
        dataset,
        specs,
        resolution=resolution,
        batch_size=batch_size,
        max_images=max_images,
        seed=seed,
        device=str(run_device),
        progress=progress,
        log=log,
    )
