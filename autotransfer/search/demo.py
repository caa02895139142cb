"""The embedded default job that ``autotransfer tune`` runs with no target (under 2 min on 2 CPU cores)."""

from __future__ import annotations

from autotransfer.core.settings import StudySettings

__all__ = ["DEFAULT_SETTINGS", "DEFAULT_TIME_BUDGET"]

#: The demo's time budget when ``autotransfer tune`` is run with no target and no limit: the
#: README promises an answer within 2 minutes on 2 CPU cores (the command's start-up included).
#: On 2 cores one full training of the demo takes about 33 s, so the default job's 5 of them
#: (``pipeline.plan``) would run about 3 minutes.
DEFAULT_TIME_BUDGET = 100.0

#: Animal silhouettes (real, package-shipped) on the package-shipped EfficientNet-Lite0
#: ImageNet weights: 64 px, 600 images, at most 7 search trials (``DEFAULT_TIME_BUDGET`` usually
#: ends the search first), each 60 optimizer steps of 32 images (~4.5 epochs of the 420 training
#: images), a bank of 4 augmented views for cached frozen prefixes.
DEFAULT_SETTINGS = StudySettings(
    target="builtin:animals",
    model="efficientnet_lite0",
    n=600,
    seed=0,
    resolution=64,
    batch_size=32,
    steps=60,
    eval_every=15,
    views=4,
    trials=7,
)
