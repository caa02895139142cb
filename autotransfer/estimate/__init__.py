"""autotransfer.estimate: task size, divergence by depth, transferability and the TaskProfile."""

from __future__ import annotations

from autotransfer.estimate.bnstats import BNDivergence, NoBatchNormError, bn_divergence, reestimate_bn_stats
from autotransfer.estimate.divergence import (
    MMDResult,
    coral_distance,
    emd_debiased,
    median_pairwise_distance,
    mmd2_unbiased,
    mmd_permutation_test,
    sinkhorn_divergence,
    sliced_wasserstein,
)
from autotransfer.estimate.estimator import MMD_SIMILARITY_SCALE, TaskEstimator
from autotransfer.estimate.features import extract_group_features, source_probabilities
from autotransfer.estimate.profile import DivergenceProfile, SourceMeasures, TaskProfile, Transferability
from autotransfer.estimate.reference import load_reference
from autotransfer.estimate.size import SizeStats, size_stats
from autotransfer.estimate.transferability import h_score, leep, logme, logme_chance, logme_over_chance

__all__ = [
    "BNDivergence",
    "DivergenceProfile",
    "MMDResult",
    "MMD_SIMILARITY_SCALE",
    "NoBatchNormError",
    "SizeStats",
    "SourceMeasures",
    "TaskEstimator",
    "TaskProfile",
    "Transferability",
    "bn_divergence",
    "coral_distance",
    "emd_debiased",
    "extract_group_features",
    "h_score",
    "leep",
    "load_reference",
    "logme",
    "logme_chance",
    "logme_over_chance",
    "median_pairwise_distance",
    "mmd2_unbiased",
    "mmd_permutation_test",
    "reestimate_bn_stats",
    "sinkhorn_divergence",
    "size_stats",
    "sliced_wasserstein",
    "source_probabilities",
]
