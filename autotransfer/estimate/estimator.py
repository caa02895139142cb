"""``TaskEstimator``: size, divergence by depth, transferability, placement and prior of a task.

The steps (issue 3; the map and quadrants: Plested & Gedeon, "Deep transfer learning for image
classification: a survey", arXiv 2205.09904):

1. size statistics of the full labelled target (``size_stats``; bad targets raise ``UserError``);
2. a stratified, seeded cap of ``max_images`` target images, resized to the model's native
   input size, run once through the model in eval mode: pooled features at every depth group;
3. the divergence profile by depth:

   - without a source sample (the common case): the source-free BN-W2 divergence of the target
     against the model's stored BatchNorm statistics (``bn_divergence``), measured in the same
     forward pass, minus the shipped same-domain reference (``load_reference``);
   - with a source sample: the unbiased RBF MMD² per depth group (median-heuristic bandwidth),
     minus a split-half MMD² of the source sample itself (≈ 0), plus, at the last group, a
     permutation p-value, the debiased Sinkhorn divergence, the debiased exact W₂², sliced
     Wasserstein and CORAL;

4. ``excess = max(raw - reference, 0)``, ``similarity = similarity_from_excess(excess, scale)``
   with the method's calibrated scale;
5. LogME, LEEP (with the pretrained source head) and H-score of the final features, and LogME
   over its chance level and NLEEP on at most 300 of them (LogME over chance mapped to
   ``transferability_score``);
6. ``place`` on the size × similarity map and ``quadrant_prior``, whose scalar rules read the
   similarity combined with the transferability score (``effective_similarity``).

Over 400 lines: the estimator's steps (features, divergence with and without a source sample,
transferability, placement) share its caches and timings.
"""

from __future__ import annotations

import functools
import time
from typing import Any, cast

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from autotransfer.backbones.types import Backbone
from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.data.sampling import stratified_subsample
from autotransfer.data.types import ImageDataset
from autotransfer.estimate.bnstats import batchnorm_layers, bn_divergence
from autotransfer.estimate.divergence import (
    coral_distance,
    emd_debiased,
    mmd2_unbiased,
    mmd_permutation_test,
    sinkhorn_divergence,
    sliced_wasserstein,
)
from autotransfer.estimate.features import (
    GroupFeatureCollector,
    extract_group_features,
    image_batches,
    native_array,
    progress_bar,
    source_probabilities,
)
from autotransfer.estimate.profile import DivergenceProfile, SourceMeasures, TaskProfile, Transferability
from autotransfer.estimate.reference import load_reference
from autotransfer.estimate.size import size_stats
from autotransfer.estimate.transferability import (
    TRANSFER_REF_IMAGES,
    h_score,
    leep,
    logme,
    logme_chance,
    logme_over_chance,
    nleep,
    reference_rows,
)
from autotransfer.prior.placement import (
    BN_W2_SIMILARITY_SCALE,
    place,
    similarity_from_excess,
    transferability_from_logme,
)
from autotransfer.prior.quadrant import quadrant_prior
from autotransfer.train.config import module_device, resolve_device

__all__ = [
    "TaskEstimator",
    "auto_batch_size",
    "CPU_BATCH_PIXELS",
    "MMD_SIMILARITY_SCALE",
    "PERMUTATIONS",
    "PERMUTATION_POINTS",
    "SINKHORN_REGS",
]

#: Scale of the per-group MMD² excess (with ``--source``) for ``similarity = exp(-excess/scale)``.
#: Calibrated against the BN-W2 scale (``BN_W2_SIMILARITY_SCALE``) on the one model where both
#: can be measured on the same targets: the ``fashion-source`` laboratory, source sample
#: Fashion-MNIST classes 0-4 (500 train images), targets the five other built-ins at 300 images.
#: A least-squares fit through the origin of the MMD² tail excess on the BN-W2 tail excess gave a
#: slope of 0.625 (benchmarks/bench_estimate.py, "MMD scale calibration" in benchmarks/RESULTS.md;
#: 0.62-0.67 at 80-500 images), so 0.625 x 0.35 = 0.22 puts both methods' similarities on one
#: scale: same-domain 1, Fashion-MNIST 5-9 0.46, animals 0.37, MNIST 0.19, solar cells 0.02.
MMD_SIMILARITY_SCALE = 0.22

#: Permutations of the MMD test at the last group (issue 3: <= 200), and points per side.
PERMUTATIONS = 200
PERMUTATION_POINTS = 500
#: Entropic regularisations tried in turn for the Sinkhorn divergence (relative to the median
#: cost). 0.05 is POT-sized accuracy; when it does not converge in 10,000 iterations (seen on
#: Fashion-MNIST 5-9 vs 0-4, 300 vs 500 points) 0.1 gave 0.821 where 0.05 with 100,000
#: iterations gave 0.820, at a tenth of the time.
SINKHORN_REGS = (0.05, 0.1, 0.2)

#: Input pixels per forward pass on CPU when ``batch_size`` is not given: 4 images at 224 px.
#: Measured (benchmarks/RESULTS.md, "Estimator follow-ups (session 2)"): EfficientNet-Lite0 at
#: 224 px on 1 thread, features + BN statistics, ran 13-18 img/s at batch 2-8 against 10-11
#: img/s at batch 32 (the whole pass 1.32x faster at batch 4, interleaved A/B). At batch 32
#: every early activation is ~150 MB, above glibc's 32 MB mmap ceiling, so each memory-bound op
#: (BatchNorm, padding, the statistics hooks) gets fresh, page-faulting memory; at 4 x 224 px
#: the largest is ~19 MB and is reused.
CPU_BATCH_PIXELS = 4 * 224 * 224
#: Largest automatic batch (CPU: small inputs such as the 32-px laboratory; CUDA: always).
MAX_AUTO_BATCH = 32


def auto_batch_size(device: torch.device | str, input_size: int) -> int:
    """Images per forward pass for ``input_size`` px inputs: ``CPU_BATCH_PIXELS / input_size²``
    on CPU (1 to ``MAX_AUTO_BATCH``), ``MAX_AUTO_BATCH`` on CUDA."""
    if torch.device(device).type != "cpu":
        return MAX_AUTO_BATCH
    return int(min(max(CPU_BATCH_PIXELS // max(int(input_size), 1) ** 2, 1), MAX_AUTO_BATCH))


_NO_REFERENCE_NOTE = "no same-domain reference: raw divergence reported as excess"


class TaskEstimator:
    """Measure a target task against a pretrained model (sklearn-style: ``fit`` validates).

    Args:
        max_images: cap on target images used for features, divergence and transferability
            (a stratified, seeded subsample; size statistics always use the full target).
        max_source_images: cap on source-sample images (a seeded subsample).
        seed: seeds the subsamples, the split-half reference and the permutations.
        progress: draw a rich progress bar while features are extracted.
        batch_size: images per forward pass; ``None`` picks it (``auto_batch_size``): on CPU
            about ``CPU_BATCH_PIXELS`` input pixels per batch (4 images at 224 px, 32 at <= 79 px),
            on CUDA 32. The numbers do not depend on it beyond float rounding (BN moments are
            summed per image).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        input_size: side in px the images are resized to for the model; ``None`` (default): the
            model's native input size, at which the shipped same-domain references and the
            similarity scales were measured. Another size (e.g. the study's training resolution,
            much cheaper than 224-260 px) is noted in the profile: its divergence reads against
            a native-size reference.

    Attributes:
        profile_: the ``TaskProfile`` of the last ``fit``.
        backbone_: the ``Backbone`` it was measured on.
        group_features_, labels_: the capped target's pooled features per depth group (each
            ``(n, d_g)``, the last the final features) and labels ``(n,)``: the forecast's linear
            probe reads them (no second forward pass).
    """

    def __init__(
        self,
        max_images: int = 1000,
        max_source_images: int = 500,
        seed: int = 0,
        progress: bool = False,
        batch_size: int | None = None,
        device: str = "auto",
        input_size: int | None = None,
    ) -> None:
        self.max_images = max_images
        self.max_source_images = max_source_images
        self.seed = seed
        self.progress = progress
        self.batch_size = batch_size
        self.device = device
        self.input_size = input_size

    # -- validation ---------------------------------------------------------------------------

    def _validate(self) -> torch.device:
        for name, low in (
            ("max_images", 4),
            ("max_source_images", 4),
            ("batch_size", 1),
            ("seed", 0),
            ("input_size", 8),
        ):
            value = getattr(self, name)
            if name in ("batch_size", "input_size") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise UserError(f"TaskEstimator {name} must be an integer >= {low}, but got {value!r}")
        if not isinstance(self.progress, bool):
            raise UserError(f"TaskEstimator progress must be true or false, but got {self.progress!r}")
        return resolve_device(self.device, what="TaskEstimator device")

    def _batch_size(self, device: torch.device, input_size: int) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        return auto_batch_size(device, input_size)

    # -- fit ----------------------------------------------------------------------------------

    def fit(
        self,
        target: ImageDataset | str,
        model: str | Backbone,
        source: ImageDataset | str | None = None,
    ) -> TaskProfile:
        """Estimate the task of fine-tuning ``model`` on ``target``.

        Args:
            target: a labelled dataset, or its spec (``builtin:digits``, ``folder:PATH``...).
            model: a model spec (``efficientnet_lite0``, ``fashion-source``, ``timm:NAME``...)
                or an already-created ``Backbone``.
            source: optional source-domain sample (a dataset or a spec; labels not needed).
                Without it the divergence is source-free (BatchNorm statistics).

        Returns:
            The ``TaskProfile`` (also kept as ``self.profile_``).

        Raises:
            UserError: bad settings, an unusable target (fewer than 2 classes, a class with
                fewer than 2 images), a source sample of fewer than 4 images, or a model
                without BatchNorm layers and no source sample.
        """
        from autotransfer.backbones.create import create_backbone
        from autotransfer.data.sources import load_dataset, skipped_summary

        start = time.perf_counter()
        timings: dict[str, float] = {}
        notes: list[str] = []
        device = self._validate()

        tick = time.perf_counter()
        dataset = load_dataset(target, require_labels=True) if isinstance(target, str) else target
        if not isinstance(dataset, ImageDataset):
            raise UserError(f"target must be a dataset spec or an ImageDataset, but got {type(target).__name__}")
        size = size_stats(dataset)
        notes.extend(dataset.notes)  # what loading left out (skipped files, capped N...)
        skipped = skipped_summary(dataset) if dataset.skipped or dataset.skipped_files else None
        source_ds = None
        if source is not None:
            source_ds = load_dataset(source, require_labels=False) if isinstance(source, str) else source
            if not isinstance(source_ds, ImageDataset):
                raise UserError(f"source must be a dataset spec or an ImageDataset, but got {type(source).__name__}")
            if len(source_ds) < 4:
                raise UserError(
                    f"source sample {source_ds.spec!r} has {len(source_ds)} images; give at least 4 "
                    "(a few hundred for a stable divergence)"
                )
        timings["load+size"] = time.perf_counter() - tick

        tick = time.perf_counter()
        if isinstance(model, Backbone):
            backbone = model
        elif isinstance(model, str):
            backbone = create_backbone(model, num_classes=size.classes)
        else:
            raise UserError(f"model must be a model spec or a Backbone, but got {type(model).__name__}")
        if source_ds is None and not batchnorm_layers(backbone.model):
            raise UserError(
                f"model {backbone.spec!r} has no BatchNorm layers: give a source sample with --source "
                "(e.g. a few hundred images of its pretraining domain)"
            )
        timings["model"] = time.perf_counter() - tick

        tick = time.perf_counter()
        capped = stratified_subsample(dataset, int(self.max_images), seed=int(self.seed))
        if len(capped) < len(dataset):
            notes.append(
                f"features on a stratified subsample of {len(capped):,} of {len(dataset):,} target "
                f"images (seed {self.seed})"
            )
        images = self._model_array(backbone, capped, notes)
        timings["resize"] = time.perf_counter() - tick

        # numpy's BLAS follows torch's thread setting: on a shared CPU an oversubscribed OpenBLAS
        # was measured 4-5x slower (SVD of 1000 x 1280: 10.8 s at its default, 2.3 s at 1 thread)
        with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
            model_device = module_device(backbone.model)
            backbone.model.to(device)
            try:
                if source_ds is None:
                    divergence, features, scale = self._source_free(backbone, images, device, timings, notes)
                else:
                    divergence, features, scale = self._with_source(backbone, images, source_ds, device, timings, notes)
            finally:
                backbone.model.to(model_device)

            tick = time.perf_counter()
            labels = cast(np.ndarray, capped.labels)  # size_stats refused an unlabelled target
            transferability = self._transferability(backbone, features[-1], labels, notes, int(self.seed))
            timings["transferability"] = time.perf_counter() - tick

        tick = time.perf_counter()
        similarity = similarity_from_excess(divergence.excess, scale)
        score = transferability_from_logme(cast(float, transferability.logme_over_chance))  # always measured here
        placement = place(size.images, size.classes, similarity)
        prior = quadrant_prior(
            placement.log10_n,
            similarity,
            list(divergence.excess),
            backbone.num_groups,
            num_classes=size.classes,
            scale=scale,
            transferability=score,
        )
        timings["prior"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start

        profile = TaskProfile(
            spec=dataset.spec,
            fingerprint=dataset.fingerprint,
            model=backbone.spec,
            num_groups=backbone.num_groups,
            size=size,
            similarity=similarity,
            transferability_score=score,
            divergence=divergence,
            transferability=transferability,
            placement=placement,
            prior=prior,
            timings=timings,
            notes=notes,
            skipped=skipped,
        )
        self.backbone_ = backbone
        self.profile_ = profile
        self.group_features_ = [np.asarray(f) for f in features]  # per depth group (n, d_g): the probe reads them
        self.labels_ = labels  # (n,), the capped images' labels
        return profile

    def _model_array(self, backbone: Backbone, dataset: ImageDataset, notes: list[str]) -> np.ndarray:
        """``dataset`` as ``(N, S, S, 3)`` uint8 at the native size, or at ``input_size`` (noted)."""
        native = int(backbone.preprocessing.input_size)
        if self.input_size is None or int(self.input_size) == native:
            return native_array(backbone, dataset)
        from autotransfer.data.cache import to_array

        notes.append(
            f"features at {int(self.input_size)} px, not the model's native {native} px: the divergence "
            "reads against references measured at the native size"
        )
        return to_array(dataset, int(self.input_size), cache=False)

    # -- divergence ---------------------------------------------------------------------------

    def _source_free(
        self,
        backbone: Backbone,
        images: np.ndarray,
        device: torch.device,
        timings: dict[str, float],
        notes: list[str],
    ) -> tuple[DivergenceProfile, list[np.ndarray], float]:
        """BN-W2 per depth group and the pooled features, in one forward pass."""
        tick = time.perf_counter()
        groups = [g.modules for g in backbone.groups]
        label = f"target features + BN statistics ({len(images)} images, {images.shape[1]} px)"
        with progress_bar(label, len(images), self.progress) as bar, GroupFeatureCollector(backbone) as collector:
            batches = image_batches(
                backbone,
                images,
                batch_size=self._batch_size(device, images.shape[1]),
                device=device,
                channels_last=True,
                progress=bar,
            )
            result = bn_divergence(backbone.model, batches, layer_groups=groups)
        features = collector.features()
        timings["features"] = time.perf_counter() - tick

        tick = time.perf_counter()
        raw = np.asarray(result.per_group, dtype=np.float64)
        missing = [backbone.groups[i].name for i in np.flatnonzero(~np.isfinite(raw))]
        if missing:
            notes.append(f"groups without BatchNorm layers {missing}: their excess is taken from the nearest group")
        try:
            reference = load_reference(backbone)
        except ValueError as err:
            reference = None
            notes.append(f"shipped reference ignored ({err})")
        if reference is None:
            notes.append(_NO_REFERENCE_NOTE)
        excess = _excess(_fill_missing(raw), reference)
        divergence = DivergenceProfile(
            method="bn-w2",
            groups=[g.name for g in backbone.groups],
            raw=[float(v) for v in raw],
            excess=[float(v) for v in excess],
            reference=None if reference is None else [float(v) for v in reference],
        )
        timings["divergence"] = time.perf_counter() - tick
        return divergence, features, BN_W2_SIMILARITY_SCALE

    def _with_source(
        self,
        backbone: Backbone,
        images: np.ndarray,
        source: ImageDataset,
        device: torch.device,
        timings: dict[str, float],
        notes: list[str],
    ) -> tuple[DivergenceProfile, list[np.ndarray], float]:
        """MMD² per depth group against a source sample, and the last-group measures."""
        tick = time.perf_counter()
        source_capped = stratified_subsample(source, int(self.max_source_images), seed=int(self.seed))
        if len(source_capped) < len(source):
            notes.append(f"source sample: a seeded subsample of {len(source_capped):,} of {len(source):,} images")
        source_images = self._model_array(backbone, source_capped, [])
        timings["resize"] = timings.get("resize", 0.0) + time.perf_counter() - tick

        tick = time.perf_counter()
        extract = functools.partial(
            extract_group_features, batch_size=self._batch_size(device, images.shape[1]), progress=self.progress
        )
        features = extract(
            backbone, images, description=f"target features ({len(images)} images, {images.shape[1]} px)"
        )
        source_features = extract(
            backbone,
            source_images,
            description=f"source features ({len(source_images)} images, {source_images.shape[1]} px)",
        )
        timings["features"] = time.perf_counter() - tick

        tick = time.perf_counter()
        rng = np.random.default_rng(int(self.seed))
        order = rng.permutation(len(source_images))
        half = len(order) // 2
        first, second = order[:half], order[half : 2 * half]
        raw, reference = [], []
        for t_feat, s_feat in zip(features, source_features):
            raw.append(mmd2_unbiased(t_feat, s_feat))
            # a same-domain divergence is never below 0: negative split-half values are noise
            reference.append(max(mmd2_unbiased(s_feat[first], s_feat[second]), 0.0))
        raw_arr, ref_arr = np.asarray(raw), np.asarray(reference)
        excess = _excess(raw_arr, ref_arr)
        measures = self._last_group_measures(features[-1], source_features[-1], notes)
        divergence = DivergenceProfile(
            method="mmd",
            groups=[g.name for g in backbone.groups],
            raw=[float(v) for v in raw_arr],
            excess=[float(v) for v in excess],
            reference=[float(v) for v in ref_arr],
            source=measures,
        )
        notes.append(
            f"divergence: unbiased RBF MMD^2 per depth group against {source.spec!r}; reference = "
            "split-half MMD^2 of the source sample"
        )
        timings["divergence"] = time.perf_counter() - tick
        return divergence, features, MMD_SIMILARITY_SCALE

    def _last_group_measures(self, target: np.ndarray, source: np.ndarray, notes: list[str]) -> SourceMeasures:
        seed = int(self.seed)
        test = mmd_permutation_test(
            target, source, n_permutations=PERMUTATIONS, max_points=PERMUTATION_POINTS, seed=seed
        )
        values: dict[str, Any] = {"mmd": test.mmd2, "mmd_p": test.p_value, "sinkhorn": None}
        failure = ""
        for reg in SINKHORN_REGS:
            try:
                values["sinkhorn"] = sinkhorn_divergence(target, source, reg=reg, seed=seed)
            except RuntimeError as err:  # no convergence at this reg: try a larger one
                failure = str(err)
                continue
            if reg != SINKHORN_REGS[0]:
                notes.append(f"Sinkhorn divergence at reg={reg} (reg={SINKHORN_REGS[0]} did not converge)")
            break
        else:
            notes.append(f"Sinkhorn divergence not computed: {failure}")
        try:
            values["emd"] = emd_debiased(target, source, seed=seed)
        except RuntimeError as err:  # the exact solver hit its iteration cap: recorded, not fatal
            values["emd"] = None
            notes.append(f"debiased exact W2 not computed: {err}")
        values["sliced"] = sliced_wasserstein(target, source, seed=seed)
        values["coral"] = coral_distance(target, source)
        return SourceMeasures(**values, n_target=int(len(target)), n_source=int(len(source)))

    # -- transferability ----------------------------------------------------------------------

    @staticmethod
    def _transferability(
        backbone: Backbone, final: np.ndarray, labels: np.ndarray, notes: list[str], seed: int = 0
    ) -> Transferability:
        probs = source_probabilities(backbone, final)
        if probs is None:
            notes.append(
                "LEEP not computed: the model has no pretrained classifier that takes the final pooled features"
            )
        final = np.asarray(final, dtype=np.float64)  # one conversion for the three scores
        logme_all = logme(final, labels)
        cap = max(TRANSFER_REF_IMAGES, 2 * len(np.unique(labels)))  # >= 2 images per class
        if len(final) <= cap:  # the same images: no second LogME
            over_chance, n_ref = logme_all - logme_chance(labels), len(final)
        else:
            over_chance, n_ref = logme_over_chance(final, labels, max_images=cap, seed=seed)
            notes.append(
                f"LogME over chance on a stratified subsample of {n_ref} of {len(final)} images (its calibration size)"
            )
        rows = reference_rows(labels, cap, seed)  # the images of LogME over chance
        try:
            nleep_ref: float | None = nleep(final[rows], labels[rows], seed=seed)
        except InvalidValueError as err:  # e.g. constant features: no mixture to fit
            nleep_ref = None
            notes.append(f"NLEEP not computed: {err}")
        return Transferability(
            logme=logme_all,
            leep=None if probs is None else leep(probs, labels),
            hscore=h_score(final, labels),
            logme_over_chance=over_chance,
            n_ref=n_ref,
            nleep=nleep_ref,
        )


def _fill_missing(values: np.ndarray) -> np.ndarray:
    """Replace NaN entries (groups without a BatchNorm layer) by the nearest finite group's value
    (the earlier one on ties); all-NaN gives zeros."""
    values = np.asarray(values, dtype=np.float64).copy()
    finite = np.flatnonzero(np.isfinite(values))
    if len(finite) == 0:
        return np.zeros_like(values)
    for i in np.flatnonzero(~np.isfinite(values)):
        values[i] = values[finite[np.argmin(np.abs(finite - i))]]
    return values


def _excess(raw: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """``max(raw - reference, 0)``; ``raw`` clipped at 0 when there is no reference."""
    raw = np.asarray(raw, dtype=np.float64)
    if reference is None:
        return np.maximum(raw, 0.0)
    out = np.maximum(raw - np.asarray(reference, dtype=np.float64), 0.0)
    return np.where(np.isfinite(out), out, 0.0)
