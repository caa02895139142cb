"""Backbones: create pretrained models with a new head, split them into depth groups, operate on the groups."""

from __future__ import annotations

from autotransfer.backbones.catalog import (
    AUTO_MODELS,
    KNOWN_MODELS,
    ModelInfo,
    TrainingImages,
    check_not_trained_on,
    describe_groups,
    lab_training_images,
    list_models,
    offline_zoo,
    parse_models,
    trained_images_in,
    weights_offline,
)
from autotransfer.backbones.checkpoint import read_state_dict, save_backbone
from autotransfer.backbones.create import ACCEPTED_SPECS, BUILTIN_MODELS, LAB_SOURCES, create_backbone, wrap_model
from autotransfer.backbones.run import group_outputs, run_groups
from autotransfer.backbones.surgery import BN_MODES, freeze, head_params, param_groups, reinit, snapshot, train_mode
from autotransfer.backbones.types import Backbone, DepthGroup, Preprocessing

__all__ = [
    "ACCEPTED_SPECS",
    "AUTO_MODELS",
    "BN_MODES",
    "BUILTIN_MODELS",
    "KNOWN_MODELS",
    "LAB_SOURCES",
    "Backbone",
    "DepthGroup",
    "ModelInfo",
    "TrainingImages",
    "Preprocessing",
    "check_not_trained_on",
    "create_backbone",
    "describe_groups",
    "freeze",
    "group_outputs",
    "head_params",
    "lab_training_images",
    "list_models",
    "offline_zoo",
    "param_groups",
    "parse_models",
    "read_state_dict",
    "reinit",
    "run_groups",
    "save_backbone",
    "snapshot",
    "train_mode",
    "trained_images_in",
    "weights_offline",
    "wrap_model",
]
