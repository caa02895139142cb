"""Study-level settings: fixed for every trial of a study and recorded as its provenance."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.core.knobs import OPTIMIZER, SCHEDULES, check_device
from autotransfer.core.validation import known_fields

__all__ = [
    "StudySettings",
    "PriorSpec",
    "default_steps",
    "DEFAULT_TARGET",
    "DEFAULT_MODEL",
    "PICK_RULES",
    "DELIVERABLES",
    "PSEUDO_THRESHOLD",
]

#: The embedded default job: built-in data and built-in weights, under 2 minutes on 2 CPU cores.
DEFAULT_TARGET = "builtin:animals"
DEFAULT_MODEL = "efficientnet_lite0"
#: How ``tune`` turns the study into the model it hands back (docs/design.md, "The pick"):
#: ``ensemble`` retrains the top distinct protocols on train+val and averages their probabilities;
#: ``cv`` re-scores the top trials by cross-validation on train+val and retrains the winner;
#: ``val`` retrains the best validation trial (the cheap rule, noisy on small validation splits).
PICK_RULES = ("ensemble", "cv", "val")
#: What the model folder's root network is (docs/design.md, "The deliverable"): ``ensemble``
#: (default) the members themselves (``load_model``, the card's timm snippet and ONNX average them);
#: ``distilled`` one network trained on the members' soft targets; ``soup`` their weight average.
#: Judged on unseen images, neither single network yet holds the ensemble's accuracy
#: (``benchmarks/RESULTS.md``, "One network"), so the ensemble stays the default.
DELIVERABLES = ("ensemble", "distilled", "soup")
#: Self-training's default pseudo-label threshold: the teachers' mean softmax must give an
#: unlabelled image at least this probability (docs/design.md, "Self-training": below FixMatch's
#: 0.95, which its model re-applies every step; ours labels once, with an averaged ensemble).
PSEUDO_THRESHOLD = 0.9


def default_steps(n_train: int, batch_size: int) -> int:
    """The budget in optimizer steps, from the dataset size (BiT-HyperRule style).

    BiT (Kolesnikov et al. 2020) fixes the schedule by dataset size: 500 steps below 20k
    images, 10k below 500k, 20k above, at batch 512. Our targets are far smaller and our
    batches too, so we keep the idea (a size-bucketed schedule, the same for every trial)
    and express it as epochs: ~20 epochs for tiny sets, fewer as they grow, at least 60
    steps so a trial sees enough updates, at most 5,000.
    """
    if n_train <= 0 or batch_size <= 0:
        raise InvalidValueError(f"need n_train > 0 and batch_size > 0, but got {n_train!r}, {batch_size!r}")
    epochs = 20 if n_train < 1000 else 12 if n_train < 5000 else 6 if n_train < 20000 else 3
    return int(min(5000, max(60, math.ceil(epochs * n_train / batch_size))))


def _open_unit(value: Any) -> bool:
    """Whether ``value`` is a number in the open interval (0, 1)."""
    try:
        return not isinstance(value, bool) and 0 < float(value) < 1
    except (TypeError, ValueError):
        return False


def _schedules(value: Any) -> tuple[str, ...]:
    """``--schedules`` (a comma-separated string or a sequence) as a tuple in ``SCHEDULES`` order;
    an unknown or missing name is a one-line ``UserError``."""
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s) for s in value]
    for name in names or [""]:
        if name not in SCHEDULES:
            raise UserError(f"--schedules takes a comma-separated list of {', '.join(SCHEDULES)}, but got {name!r}")
    return tuple(s for s in SCHEDULES if s in names)


@dataclass(frozen=True)
class PriorSpec:
    """``--prior``, parsed once (``StudySettings.prior_spec``): what the study searches around.

    ``kind``: ``quadrant`` (the survey's rules), ``none`` (the wide ranges, nothing enqueued) or
    ``surface`` (the surface of optimal protocols stored at ``path``). ``str()`` gives back the
    text form the study records (``quadrant``, ``none``, ``surface:PATH``).
    """

    kind: str
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> "PriorSpec":
        """The spec of ``text``; anything else is a one-line ``UserError`` naming it."""
        if text in ("quadrant", "none"):
            return cls(text)
        if isinstance(text, str) and text.startswith("surface:") and len(text) > len("surface:"):
            return cls("surface", text[len("surface:") :])
        raise UserError(f"--prior must be quadrant, none or surface:PATH, but got {text!r}")

    def __str__(self) -> str:
        return f"surface:{self.path}" if self.kind == "surface" else self.kind


@dataclass
class StudySettings:
    """Everything a trial needs besides its protocol; stored in the study's user attributes.

    ``fingerprint``, ``metric``, ``steps`` and ``eval_every`` are filled in when the data is
    known (``resolved``) and then checked on resume.
    """

    target: str = DEFAULT_TARGET
    model: str = DEFAULT_MODEL
    n: int | None = None
    seed: int = 0
    resolution: int = 64
    batch_size: int = 32
    steps: int | None = None
    eval_every: int | None = None
    optimizer: str = OPTIMIZER.default
    augment: bool = True
    views: int = 8
    val_frac: float = 0.15
    test_frac: float = 0.15
    trials: int = 20
    prune: bool = True
    prior: str = "quadrant"
    device: str = "auto"
    fingerprint: str = ""
    metric: str = ""
    num_classes: int = 0
    n_train: int = 0
    val_images: int = 0
    val_effective: int = 0
    pick: str = "ensemble"
    #: What the folder's root network is (``--deliver``; ``DELIVERABLES``).
    deliver: str = "ensemble"
    #: Self-training (docs/design.md, "Self-training"): a dataset spec or folder of unlabelled
    #: images of the target domain (``tune --unlabelled``), and the teacher's least confidence
    #: for a pseudo-label (``--pseudo-threshold``).
    unlabelled: str | None = None
    pseudo_threshold: float = PSEUDO_THRESHOLD
    #: The schedules the study searches (``--schedules``; docs/design.md, "Schedules"), in
    #: ``SCHEDULES`` order; ``("one-stage",)`` searches as studies did before schedules existed.
    schedules: tuple[str, ...] = SCHEDULES

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 4:
            raise UserError(f"--n must be at least 4 images, but got {self.n!r}")
        if self.resolution < 8:
            raise UserError(f"--resolution must be at least 8 px, but got {self.resolution!r}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, but got {self.batch_size!r}")
        if self.trials < 1:
            raise UserError(f"--trials must be >= 1, but got {self.trials!r}")
        OPTIMIZER.check(self.optimizer, "--optimizer")
        check_device(self.device, "--device")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be >= 1 (leave it out for the size-based default), but got {self.steps!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise UserError(f"eval_every must be >= 1, but got {self.eval_every!r}")
        if self.pick not in PICK_RULES:
            raise UserError(f"--pick must be one of {', '.join(PICK_RULES)}, but got {self.pick!r}")
        if self.deliver not in DELIVERABLES:
            raise UserError(f"--deliver must be one of {', '.join(DELIVERABLES)}, but got {self.deliver!r}")
        PriorSpec.parse(self.prior)
        self.schedules = _schedules(self.schedules)
        if not _open_unit(self.pseudo_threshold):
            raise UserError(f"--pseudo-threshold must lie in (0, 1), but got {self.pseudo_threshold!r}")
        if self.unlabelled is not None and not str(self.unlabelled).strip():
            raise UserError("--unlabelled must name a folder of unlabelled images, but got an empty string")
        if not (0 < self.val_frac < 0.5 and 0 < self.test_frac < 0.5):
            raise UserError(f"val/test fractions must lie in (0, 0.5), but got {self.val_frac!r}, {self.test_frac!r}")

    @property
    def prior_spec(self) -> PriorSpec:
        """``prior`` parsed (``PriorSpec``)."""
        return PriorSpec.parse(self.prior)

    def resolved(
        self,
        *,
        fingerprint: str,
        metric: str,
        num_classes: int,
        n_train: int,
        val_images: int = 0,
        val_effective: int = 0,
    ) -> "StudySettings":
        """A copy with the data-dependent fields filled (budget defaulted from ``n_train``;
        ``val_images`` and ``val_effective`` size the pruner's noise margin)."""
        steps = self.steps or default_steps(n_train, self.batch_size)
        eval_every = self.eval_every or max(1, steps // 6)
        return replace(
            self,
            fingerprint=fingerprint,
            metric=metric,
            num_classes=num_classes,
            n_train=n_train,
            val_images=val_images,
            val_effective=val_effective,
            steps=steps,
            eval_every=min(eval_every, steps),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StudySettings":
        """Build from a mapping (a study's record, an export); missing keys take defaults, and an
        unknown key is a one-line ``UserError`` naming it (a typo must not vanish silently)."""
        return cls(**known_fields(cls, values, "study settings"))
