"""Self-training on unlabelled images of the target (``tune --unlabelled``; docs/design.md,
"Self-training").

A teacher pseudo-labels the unlabelled images, keeping those its probability puts at or above
the threshold (``train.pseudo.select_pseudo_labels``); a student with the same protocol trains on
the labelled plus the pseudo-labelled images. The student is kept only if it beats the teacher on
validation. That decision must read a validation split neither model trained on, and the
handed-back model trained on train+val, so it runs in two phases:

1. Decide. The teachers are the handed-back model's member protocols trained on the train split
   with a fresh seed (``DECISION_SEED_OFFSET``): the study's own trials were picked for their
   validation scores, so re-running them with the study's seed would hand the teachers that
   selection's luck, and the students none of it. Their ensemble (mean softmax)
   pseudo-labels the images; the students train on train + pseudo-labelled images; the students'
   ensemble is kept only if its validation score is strictly above the teachers' (a tie keeps
   the teacher: no evidence for the change).
2. Only if the students won: the handed-back train+val model pseudo-labels the images again, and
   final students train on train+val + pseudo-labelled images, each checked like the final
   retrain (``final.is_broken``: a broken or diverged student gives its slot back to the member
   it would replace). They are handed back in the same model-folder format.

Every training uses the protocol's own step budget, batch and augmentation: the pseudo-labelled
images are augmented as the labelled ones (no extra noisy-student noise, no dropout or stochastic
depth added), so the only change from the teacher is the added images. The outcome is recorded
on the study (``ATTR["self_training"]``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from autotransfer.core.errors import UserError
from autotransfer.core.schema import ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.handback.final import FinalEnsemble, FinalModel, Member, ensemble_test_score, is_broken
from autotransfer.search.prepared import PreparedData, array_batches, split_batches

__all__ = [
    "AUGMENTATION",
    "SelfTraining",
    "load_unlabelled",
    "self_training_key",
    "keep_student",
    "self_train",
]

#: What the record says about the students' augmentation.
AUGMENTATION = "the protocol's own (pseudo-labelled images augmented as the labelled ones; no added noise)"
#: Phase 1 trains teachers and students with ``seed + DECISION_SEED_OFFSET``: both sides are fresh
#: runs, paired by seed, so the teachers' validation score is not the selected trials' optimistic
#: one (the members are the top 3 of ~20 trials by that very score).
DECISION_SEED_OFFSET = 1
#: ``trained_on`` of a final student.
TRAINED_ON = "train+val+pseudo"


def load_unlabelled(spec: str) -> Any:
    """The unlabelled images of ``spec`` (a folder of images, a dataset spec) as an
    ``ImageDataset`` with no labels (a labelled source's labels are dropped). A missing, empty or
    unreadable source is a one-line ``UserError`` naming ``--unlabelled``."""
    from autotransfer.data import load_dataset

    try:
        pool = load_dataset(spec, require_labels=False)
    except UserError as err:
        raise UserError(f"--unlabelled {spec!r}: {err}") from None
    if len(pool) == 0:
        raise UserError(f"--unlabelled {spec!r} holds no images: give a folder of unlabelled images of the target")
    pool.labels = None
    return pool


def self_training_key(settings: StudySettings) -> dict[str, Any] | None:
    """What makes a self-training result current: the unlabelled images' spec and the threshold
    (``None`` without ``--unlabelled``). The final model records it, so a resumed study keeps a
    model self-trained with the same request and redoes one made otherwise."""
    if not settings.unlabelled:
        return None
    return {"unlabelled": str(settings.unlabelled), "threshold": float(settings.pseudo_threshold)}


def keep_student(student: float | None, teacher: float) -> bool:
    """Whether the students replace the teachers: strictly better on validation. A tie keeps the
    teacher (no evidence for the change); a student that did not train (``None``) loses."""
    return student is not None and student > teacher


@dataclass
class SelfTraining:
    """The outcome: ``record`` (stored as ``ATTR["self_training"]``) and, when the students won
    and at least one final student passed its check, the model to hand back (``final``)."""

    record: dict[str, Any]
    final: FinalEnsemble | None = None

    @property
    def kept(self) -> bool:
        return bool(self.record.get("kept"))


def _train(protocol, settings: StudySettings, batches, *, progress, micro_batch: int | None):
    """``protocol`` trained on ``batches`` at the study's budget and seed: ``(backbone, result, micro_batch)``."""
    from autotransfer.backbones import create_backbone
    from autotransfer.search.objective import train_config_for
    from autotransfer.train import train_protocol, with_oom_retry

    def run(micro: int | None):
        backbone = create_backbone(settings.model, num_classes=settings.num_classes)
        config = train_config_for(protocol, settings, backbone.num_groups, micro_batch=micro)
        config = config.replace(eval_every=config.steps)
        result = train_protocol(backbone, batches, None, config, metric=settings.metric, progress=progress)
        return backbone, result

    (backbone, result), micro = with_oom_retry(run, micro_batch, settings.batch_size)
    return backbone, result, micro


def _pool_array(pool, settings: StudySettings) -> np.ndarray:
    from autotransfer.data import to_array

    return to_array(pool, settings.resolution)


def _pool_batches(array: np.ndarray, settings: StudySettings, preprocessing, device) -> Any:
    """The unlabelled images as ``DeviceBatches`` for prediction (placeholder labels, never read)."""
    return array_batches(array, np.zeros(len(array), dtype=np.int64), settings, preprocessing, device, flip=False)


def _teacher_probabilities(backbones: list[Any], batches) -> np.ndarray:
    """``(N, C)`` the mean softmax of ``backbones`` on the unlabelled images."""
    from autotransfer.train import predict_proba

    _, proba = predict_proba([b.model for b in backbones], batches)
    return proba.cpu().numpy()


def _with_pseudo(labelled, array: np.ndarray, pseudo, settings: StudySettings, preprocessing, device) -> Any:
    """``DeviceBatches`` of ``labelled`` (a split) plus the pseudo-labelled images: one training
    set, augmented as the labelled split is (its ``flip``)."""
    from autotransfer.data import to_array

    images = np.concatenate([to_array(labelled, settings.resolution), array[pseudo.indices]])
    labels = np.concatenate([np.asarray(labelled.labels, dtype=np.int64), pseudo.labels])
    digest = hashlib.sha256(labelled.fingerprint.encode())
    digest.update(np.ascontiguousarray(array[pseudo.indices]).tobytes())
    digest.update(pseudo.labels.tobytes())
    return array_batches(
        images, labels, settings, preprocessing, device, flip=labelled.flip, fingerprint=digest.hexdigest()
    )


def _per_class(pseudo, classes: list[str]) -> dict[str, int]:
    return {str(name): count for name, count in zip(classes, pseudo.per_class(len(classes)))}


def self_train(
    study,
    settings: StudySettings,
    prepared: PreparedData,
    members: list[Member],
    handed_back: FinalEnsemble,
    pool,
    *,
    progress: Callable[[int, int], None] | None = None,
    micro_batch: int | None = None,
    note: Callable[[str], None] | None = None,
) -> SelfTraining:
    """Run both phases for ``members`` (the handed-back model's trials, in order), with
    ``handed_back`` the teacher model retrained on train+val and ``pool`` the unlabelled images
    (an ``ImageDataset``; its labels, if any, are not read). Records the outcome on ``study``
    and returns it. ``note`` receives one line per step (progress on stderr)."""
    from autotransfer.backbones import create_backbone
    from autotransfer.train import DivergedError, evaluate, release_memory
    from autotransfer.train.pseudo import select_pseudo_labels

    say = note or (lambda text: None)
    started = time.perf_counter()
    threshold = float(settings.pseudo_threshold)
    classes = list(prepared.dataset.classes)
    preprocessing = create_backbone(settings.model, num_classes=settings.num_classes).preprocessing
    k = len(members)
    record: dict[str, Any] = {
        "unlabelled": str(settings.unlabelled),
        "fingerprint": pool.fingerprint,
        "threshold": threshold,
        "offered": len(pool),
        "members": [m.trial for m in members],
        "metric": settings.metric,
        "val_images": len(prepared.val),
        "steps": int(settings.steps or 0),
        "augmentation": AUGMENTATION,
        "kept": False,
        "decision_seed": int(settings.seed) + DECISION_SEED_OFFSET,
        "members_trial_val": [m.val_score for m in members],
    }
    trainings = 0
    decide = replace(settings, seed=int(settings.seed) + DECISION_SEED_OFFSET)

    def finish(outcome: SelfTraining) -> SelfTraining:
        outcome.record.update(
            trainings=trainings,
            seconds=round(time.perf_counter() - started, 1),
            at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        study.set_user_attr(ATTR["self_training"], outcome.record)
        return outcome

    array = _pool_array(pool, settings)
    pool_batches = _pool_batches(array, settings, preprocessing, prepared.device)
    train = split_batches(prepared, "train", settings, preprocessing)
    val = split_batches(prepared, "val", settings, preprocessing)

    # phase 1: decide on validation, with teachers and students that never saw it
    def train_all(role: str, data, where: str) -> list[Any] | None:
        """Every member's protocol trained on ``data``; ``None`` (the reason recorded) when one diverged."""
        nonlocal trainings, micro_batch
        out = []
        for i, member in enumerate(members):
            say(f"self-training: {role} {i + 1} of {k} (trial {member.trial}) on {where}")
            try:
                backbone, _, micro_batch = _train(
                    member.protocol, decide, data, progress=progress, micro_batch=micro_batch
                )
            except DivergedError as err:
                record["reason"] = f"{role} {i + 1} (trial {member.trial}) diverged on {where} ({err})"
                return None
            finally:
                trainings += 1
            out.append(backbone)
        return out

    teachers = train_all("teacher", train, "the train split")
    if teachers is None:
        return finish(SelfTraining(record))
    record["teacher_val"] = round(float(evaluate(teachers, val, settings.metric)), 6)
    say(f"self-training: pseudo-labelling {len(pool):,} unlabelled images (threshold {threshold:g})")
    pseudo = select_pseudo_labels(_teacher_probabilities(teachers, pool_batches), threshold)
    del teachers
    release_memory()
    record.update(kept_images=len(pseudo.indices), per_class=_per_class(pseudo, classes))
    if len(pseudo.indices) == 0:
        record["reason"] = f"no unlabelled image reached the threshold {threshold:g}: no student trained"
        return finish(SelfTraining(record))
    student_data = _with_pseudo(prepared.train, array, pseudo, settings, preprocessing, prepared.device)
    students = train_all("student", student_data, f"train + {len(pseudo.indices):,} pseudo-labelled images")
    if students is None:
        return finish(SelfTraining(record))
    record["student_val"] = round(float(evaluate(students, val, settings.metric)), 6)
    del students, student_data
    release_memory()
    if not keep_student(record["student_val"], record["teacher_val"]):
        record["reason"] = "the students did not beat the teachers on validation, so the teacher is handed back"
        return finish(SelfTraining(record))

    # phase 2: the handed-back (train+val) model labels again; final students on train+val + pseudo
    say(f"self-training: the students won; pseudo-labelling again with the handed-back model (threshold {threshold:g})")
    final_pseudo = select_pseudo_labels(_teacher_probabilities(handed_back.backbones, pool_batches), threshold)
    final_record: dict[str, Any] = {
        "kept_images": len(final_pseudo.indices),
        "per_class": _per_class(final_pseudo, classes),
    }
    record["final"] = final_record
    if len(final_pseudo.indices) == 0:
        record["reason"] = f"the handed-back model put no unlabelled image at or above {threshold:g}: kept the teacher"
        return finish(SelfTraining(record))
    data = _with_pseudo(prepared.trainval, array, final_pseudo, settings, preprocessing, prepared.device)
    trainval = split_batches(prepared, "trainval", settings, preprocessing)
    test = split_batches(prepared, "test", settings, preprocessing)
    finals: list[FinalModel] = []
    for i, (member, teacher) in enumerate(zip(members, handed_back.members)):
        say(
            f"self-training: final student {i + 1} of {k} (trial {member.trial}) on train+val +"
            f" {len(final_pseudo.indices):,} pseudo-labelled images"
        )
        fit: float | None = None
        try:
            backbone, result, micro_batch = _train(
                member.protocol, settings, data, progress=progress, micro_batch=micro_batch
            )
            # the check reads the labelled train+val images only: pseudo-labels are not ground truth
            fit = float(evaluate(backbone, trainval, settings.metric))
            broken = is_broken(fit, member.expected, member.expected_images)
            why = f"it fits its labelled train+val images at {fit:.3f}, below the {member.expected:.3f} expected"
        except DivergedError as err:
            broken, why = True, f"it diverged ({err})"
        finally:
            trainings += 1
        if broken:
            final_record.setdefault("broken", []).append(
                f"self-training: final student {i + 1} (trial {member.trial}) broke ({why}); its teacher stays"
            )
            finals.append(teacher)
            continue
        alone = float(evaluate(backbone, test, settings.metric))
        finals.append(FinalModel(backbone, alone, fit, TRAINED_ON, float(result.images_per_s)))
    replaced = sum(f.trained_on == TRAINED_ON for f in finals)
    final_record["students"] = replaced
    if replaced == 0:
        record["reason"] = "every final student broke on train+val: the teacher is handed back"
        return finish(SelfTraining(record))
    test_score = (
        finals[0].test_score
        if len(finals) == 1
        else ensemble_test_score([f.backbone for f in finals], settings, prepared)
    )
    final_record["test_score"] = round(float(test_score), 6)
    final_record["member_trained_on"] = [f.trained_on for f in finals]
    record.update(kept=True, reason="the students beat the teachers on validation")
    ensemble = FinalEnsemble(finals, float(test_score), handed_back.seconds + (time.perf_counter() - started))
    return finish(SelfTraining(record, ensemble))
