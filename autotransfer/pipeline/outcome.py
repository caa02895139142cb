"""What ``tune`` reports: its ``TuneResult`` and the one-line notes of its summary (which prior,
which pick and what it cost, whether the study may enter the surface)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotransfer.core.protocol import Protocol, schedule_words
from autotransfer.core.settings import PriorSpec, StudySettings
from autotransfer.handback.pick import Pick

__all__ = [
    "TuneResult",
    "describe_prior",
    "describe_pick",
    "describe_self_training",
    "surface_evidence_shortfall",
    "SMALL_VALIDATION",
    "SURFACE_MIN_TRIALS",
    "SURFACE_MIN_VAL_IMAGES",
]


SMALL_VALIDATION = 100  # below this many validation images, tune says how coarse the scores are
#: A study's optimum enters the surface (the next study's prior) only with this much evidence:
#: at least 10 finished search trials (half the default budget: fewer and the "optimum" is one of
#: the enqueued guesses) and 30 validation images (N = 200; below that one image is 4+ points, and
#: the judged leave-one-target-out benchmark found no gain from the surface at N = 100, where the
#: validation split holds 15 images; benchmarks/RESULTS.md).
SURFACE_MIN_TRIALS = 10
SURFACE_MIN_VAL_IMAGES = 30


def surface_evidence_shortfall(search_trials: int, val_images: int) -> str | None:
    """Why a study is too thin to enter the surface of optimal protocols, or ``None``."""
    missing = []
    if search_trials < SURFACE_MIN_TRIALS:
        missing.append(f"{search_trials} finished search trials (needs {SURFACE_MIN_TRIALS})")
    if val_images < SURFACE_MIN_VAL_IMAGES:
        missing.append(f"{val_images} validation images (needs {SURFACE_MIN_VAL_IMAGES})")
    return ("too little evidence: " + " and ".join(missing)) if missing else None


def describe_prior(spec: PriorSpec, prior: dict[str, Any] | None) -> str:
    """One line: which prior the study searches around, and from which file; the centre's
    schedule too when the study searches schedules or the centre is not one-stage."""
    if spec.kind == "none" or prior is None:
        return "prior: none (uniform start-up draws over the wide ranges; nothing enqueued)"
    if spec.kind == "surface":
        line = f"prior: the surface of optimal protocols in {spec.path!r} ({prior.get('quadrant', '')})"
    else:
        line = f"prior: the quadrant rules ({prior.get('quadrant', '')}; survey arXiv 2205.09904)"
    return line + _centre_schedule(prior)


def _centre_schedule(prior: dict[str, Any]) -> str:
    """``"; centre schedule lp-ft (...)"``, or ``""`` for a one-stage centre of a study that
    searches no other schedule (as every study did before schedules existed)."""
    centre = prior.get("centre") or {}
    schedule = centre.get("schedule", "one-stage")
    searched = list((prior.get("space") or {}).get("schedules") or ["one-stage"]) != ["one-stage"]
    if schedule == "one-stage" and not searched:
        return ""
    return f"; centre schedule {schedule_words(centre)}"


def describe_pick(pick: Pick | None, settings: StudySettings) -> str:
    """One line: the pick rule, the chosen protocol's score with its uncertainty, and the cost."""
    from autotransfer.train import score_interval

    if pick is not None and pick.rule == "ensemble":
        if not pick.is_ensemble:
            return "pick: an ensemble of the top protocols (rule 'ensemble'), but only one transfer trial completed: that one"
        return (
            f"pick: an ensemble of the top {len(pick.members)} distinct protocols by settled validation score (trials"
            f" {', '.join(map(str, pick.members))}; rule 'ensemble'), each retrained on train+val, probabilities"
            f" averaged; cost {pick.trainings} extra trainings of {pick.steps} steps and {len(pick.members)}x the"
            " prediction time; the validation scores of the top protocols lie within noise of each other"
        )
    if pick is None or pick.chosen is None:
        return "pick: the best validation trial (rule 'val'; no re-score)"
    c = pick.chosen
    low, high = score_interval(min(max(c.oof_score, 0.0), 1.0), c.images)
    return (
        f"pick: trial {c.trial} by {len(c.fold_scores)}-fold cross-validation of the top {len(pick.candidates)}"
        f" protocols on train+val: {c.oof_score:.3f} on {c.images} out-of-fold images (95% CI {low:.3f}-{high:.3f},"
        f" instability ±{c.instability:.3f} against the other candidates on the same folds); cost {pick.trainings} extra trainings of {pick.steps} steps"
        f" ({pick.seconds:.0f} s)"
    )


def describe_self_training(record: dict[str, Any]) -> str:
    """One line: whether self-training's students were kept, on what evidence, and what it cost,
    e.g. ``self-training: kept (student 0.833 vs teacher 0.800 on 30 validation images; 1,240 of
    2,000 unlabelled images at or above 0.9); ...``."""
    verdict = "kept" if record.get("kept") else "not kept"
    threshold = float(record.get("threshold", 0.0))
    offered, kept_images = int(record.get("offered", 0)), record.get("kept_images")
    images = (
        f"{int(kept_images):,} of {offered:,} unlabelled images at or above {threshold:g}"
        if kept_images is not None
        else f"{offered:,} unlabelled images offered"
    )
    teacher, student = record.get("teacher_val"), record.get("student_val")
    if teacher is not None and student is not None:
        evidence = (
            f"student {student:.3f} vs teacher {teacher:.3f} on {record.get('val_images')} validation images; {images}"
        )
    elif teacher is not None:
        evidence = f"teacher {teacher:.3f} on {record.get('val_images')} validation images; {images}"
    else:
        evidence = images
    line = f"self-training: {verdict} ({evidence})"
    if record.get("reason"):
        line += f"; {record['reason']}"
    final = record.get("final") or {}
    if record.get("kept"):
        line += (
            f"; the handed-back model pseudo-labelled {int(final.get('kept_images', 0)):,} images for"
            f" {final.get('students')} final student(s) on train+val"
        )
    cost = f"cost {record.get('trainings', 0)} trainings of {record.get('steps')} steps"
    if record.get("seconds") is not None:
        cost += f" ({float(record['seconds']):.0f} s)"
    return f"{line}; {cost}"


@dataclass(frozen=True)
class TuneResult:
    """What ``tune`` hands back (the CLI prints it), built once when the job ends."""

    study_name: str
    storage: str
    settings: StudySettings
    best_protocol: Protocol | None
    best_trial: int | None
    val_score: float | None
    test_score: float | None
    controls: dict[str, float | None]
    negative_transfer: bool
    export_path: Path | None
    model_path: Path | None
    n_search_trials: int
    profile: dict[str, Any] | None
    prior: dict[str, Any] | None
    integers: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    val_images: int | None = None
    test_images: int | None = None
    pick: dict[str, Any] | None = None
    trained_on: str | None = None
    self_training: dict[str, Any] | None = None
    #: what the folder's root network is (``handback.deliver.Delivered.record``)
    deliverable: dict[str, Any] | None = None
    #: seconds per stage, and as multiples of one full training (``core.budget.Ledger.to_dict``)
    ledger: dict[str, Any] | None = None
    #: the time budget's plan (``pipeline.plan.JobPlan``), when the job had one
    plan: dict[str, Any] | None = None
    #: which candidate model was chosen and why (``pipeline.model_choice.ModelChoice``), when several were
    model_choice: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_name,
            "storage": self.storage,
            "metric": self.settings.metric,
            "best_protocol": self.best_protocol.to_dict() if self.best_protocol else None,
            "best_trial": self.best_trial,
            "freeze_reinit": list(self.integers) if self.integers else None,
            "val_score": self.val_score,
            "test_score": self.test_score,
            "val_images": self.val_images,
            "test_images": self.test_images,
            "pick": self.pick,
            "skipped": (self.profile or {}).get("skipped"),
            "trained_on": self.trained_on,
            "self_training": self.self_training,
            "deliverable": self.deliverable,
            "controls": self.controls,
            "negative_transfer": self.negative_transfer,
            "export": str(self.export_path) if self.export_path else None,
            "model": str(self.model_path) if self.model_path else None,
            "search_trials": self.n_search_trials,
            "settings": self.settings.to_dict(),
            "notes": self.notes,
            "ledger": self.ledger,
            "plan": self.plan,
            "model_choice": self.model_choice,
        }
