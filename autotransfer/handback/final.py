"""The final model: retrain the picked protocol on train+val, check it, fall back if it broke.

A retrain on train+val at the study's budget is a new run (more images per epoch, another data
order), and it can fail where the trial did not: measured (issue 14), a trial that scored 0.733 on
validation (10 classes) retrained to 0.200 on the test split. The check reads only the retrain
itself, never the test split (which must stay a clean estimate): the retrained model, in eval
mode, must fit its own training images (train+val) at least about as well as the pick expected
the protocol to score on images it had *not* seen (``expected``, the cross-validated score, or
the trial's validation score). A model that fits its training set worse than that by more than
``max(BROKEN_MARGIN, 2 standard errors)`` did not learn; ``tune`` then hands back the trial's
own model instead (the protocol trained on the train split with the trial's seed, which is the
very run whose validation score the study recorded) and says so.

An ensemble (pick rule ``ensemble``) is its members, each retrained and checked this way; the
handed-back model averages their softmax probabilities, and its test score is that average's
(``ensemble_test_score``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import FREEZE_ATTR, REINIT_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.search.prepared import PreparedData, split_batches

__all__ = [
    "FinalModel",
    "FinalEnsemble",
    "Member",
    "retrain_and_test",
    "train_final",
    "train_ensemble",
    "hand_back",
    "trial_model_final",
    "ensemble_test_score",
    "is_broken",
    "BROKEN_MARGIN",
    "handed_back_members",
    "final_is_current",
]

#: The least shortfall of the training fit below the expected score that counts as broken.
BROKEN_MARGIN = 0.10


def is_broken(fit: float, expected: float, images: int) -> bool:
    """Whether a model that fits its training images at ``fit`` broke, given that the protocol
    scored ``expected`` on ``images`` unseen images (``fit`` < ``expected`` - max(0.10, 2 SE))."""
    se = math.sqrt(max(expected * (1 - expected), 1e-12) / max(images, 1))
    return fit < expected - max(BROKEN_MARGIN, 2 * se)


@dataclass
class FinalModel:
    """The model ``tune`` hands back.

    Attributes:
        backbone: the trained ``Backbone``.
        test_score: its score on the held-out test split.
        fit_score: the retrain's score on train+val in eval mode (the check).
        trained_on: ``train+val`` or, after a fallback, ``train`` (the trial's own model).
        notes: what happened, for the summary.
    """

    backbone: Any
    test_score: float
    fit_score: float | None
    trained_on: str
    images_per_s: float
    notes: list[str] = field(default_factory=list)
    #: the study trial whose protocol this is (``hand_back`` sets it; it may leave members out)
    trial: int | None = None

    @property
    def fell_back(self) -> bool:
        return self.trained_on != "train+val"


def retrain_and_test(
    protocol: Protocol,
    settings: StudySettings,
    prepared: PreparedData,
    *,
    progress: Callable[[int, int], None] | None = None,
    micro_batch: int | None = None,
    split: str = "trainval",
):
    """Train ``protocol`` on ``split`` (train+val) for the study's budget; score it on the test split.

    On out-of-memory it retries with gradient accumulation over halved micro-batches, starting from
    ``micro_batch`` (what the search learned). Returns ``(backbone, test_score, train_result)``.
    """
    from autotransfer.backbones import create_backbone
    from autotransfer.search.objective import train_config_for
    from autotransfer.train import evaluate, train_protocol, with_oom_retry
    from autotransfer.train.loop import EVAL_BATCH

    def run(micro: int | None):
        backbone = create_backbone(settings.model, num_classes=settings.num_classes)
        config = train_config_for(protocol, settings, backbone.num_groups, micro_batch=micro)
        config = config.replace(eval_every=config.steps)
        data = split_batches(prepared, split, settings, backbone.preprocessing)
        result = train_protocol(backbone, data, None, config, metric=settings.metric, progress=progress)
        # a plain full-precision pass, as `autotransfer evaluate` scores the saved model (the
        # trial loop may validate on cached frozen features)
        test = split_batches(prepared, "test", settings, backbone.preprocessing)
        return backbone, evaluate(backbone, test, settings.metric, batch_size=micro or EVAL_BATCH), result

    (backbone, test_score, result), _ = with_oom_retry(run, micro_batch, settings.batch_size)
    return backbone, float(test_score), result


def train_final(
    protocol: Protocol,
    settings: StudySettings,
    prepared: PreparedData,
    *,
    expected: float,
    expected_images: int,
    progress: Callable[[int, int], None] | None = None,
    micro_batch: int | None = None,
) -> FinalModel:
    """Retrain on train+val, check the fit against ``expected`` (``is_broken``), fall back to the
    trial's own model when broken, and score what is handed back on the test split."""
    from autotransfer.train import DivergedError, evaluate

    # the decision below reads only the fit on train+val, never the test score
    fit: float | None = None
    try:
        backbone, test_score, result = retrain_and_test(
            protocol, settings, prepared, progress=progress, micro_batch=micro_batch
        )
        trainval = split_batches(prepared, "trainval", settings, backbone.preprocessing)
        fit = evaluate(backbone, trainval, settings.metric)
        broken = is_broken(fit, expected, expected_images)
        why = (
            f"it fits its own train+val images at {fit:.3f}, below the {expected:.3f} the pick expected on unseen"
            f" images ({expected_images} images)"
        )
    except DivergedError as err:
        broken, why = True, f"it diverged ({err})"
    if not broken:
        return FinalModel(backbone, test_score, fit, "train+val", float(result.images_per_s))
    notes = [
        f"the retrain on train+val broke: {why}; handing back the trial's own model instead (trained on the"
        " train split with the trial's seed, the run the study validated)"
    ]
    backbone, test_score, result = retrain_and_test(
        protocol, settings, prepared, progress=progress, micro_batch=micro_batch, split="train"
    )
    return FinalModel(backbone, test_score, fit, "train", float(result.images_per_s), notes)


@dataclass(frozen=True)
class Member:
    """One model of the handed-back model: the study trial whose protocol it trains, and the score
    the check expects of it on ``expected_images`` unseen images. ``freeze_reinit``: the integer
    depths the trial recorded for its model."""

    trial: int
    protocol: Protocol
    expected: float
    expected_images: int
    val_score: float | None = None
    freeze_reinit: tuple[int, int] | None = None


@dataclass
class FinalEnsemble:
    """The handed-back model: one or more checked retrains (``members``, in the pick's order).

    ``test_score`` is the score of their mean softmax on the test split (for one member, that
    member's score); ``seconds`` the wall time of all retrains.
    """

    members: list[FinalModel]
    test_score: float
    seconds: float = 0.0

    @property
    def backbones(self) -> list[Any]:
        return [m.backbone for m in self.members]

    @property
    def notes(self) -> list[str]:
        return [note for m in self.members for note in m.notes]

    @property
    def trained_on(self) -> str:
        """``train+val``, ``train`` (the one member fell back) or e.g. ``train+val, train, train+val``."""
        kinds = [m.trained_on for m in self.members]
        return kinds[0] if len(set(kinds)) == 1 else ", ".join(kinds)


def ensemble_test_score(backbones: list[Any], settings: StudySettings, prepared: PreparedData) -> float:
    """The test-split score of the mean softmax of ``backbones`` (a plain full-precision pass)."""
    from autotransfer.train import evaluate

    test = split_batches(prepared, "test", settings, backbones[0].preprocessing)
    return float(evaluate(backbones, test, settings.metric))


def train_ensemble(
    members: list[Member],
    settings: StudySettings,
    prepared: PreparedData,
    *,
    progress: Callable[[int, int], None] | None = None,
    micro_batch: int | None = None,
    on_member: Callable[[int, int, int], None] | None = None,
) -> FinalEnsemble:
    """Retrain and check each of ``members`` (``train_final``), then score their mean softmax on
    the test split. ``on_member(i, k, trial)`` is called before each retrain. (``hand_back`` with
    every member retrained: the final stage without a time budget.)"""
    return hand_back(
        members,
        settings,
        prepared,
        retrain=lambda i: True,
        trial_model=lambda member: None,
        reproduce=lambda i: True,
        progress=progress,
        micro_batch=micro_batch,
        on_member=(lambda i, k, trial, again: on_member(i, k, trial)) if on_member else None,
    )


def trial_model_final(backbone: Any, settings: StudySettings, prepared: PreparedData, note: str) -> FinalModel:
    """A search trial's own model (trained on the train split) as a member of what is handed
    back, scored on the test split; ``note`` says why it was not retrained."""
    from autotransfer.train import evaluate

    test = split_batches(prepared, "test", settings, backbone.preprocessing)
    return FinalModel(backbone, float(evaluate(backbone, test, settings.metric)), None, "train", float("nan"), [note])


def hand_back(
    members: list[Member],
    settings: StudySettings,
    prepared: PreparedData,
    *,
    retrain: Callable[[int], bool],
    trial_model: Callable[[Member], Any | None],
    reproduce: Callable[[int], bool],
    progress: Callable[[int, int], None] | None = None,
    micro_batch: int | None = None,
    on_member: Callable[[int, int, int, bool], None] | None = None,
) -> FinalEnsemble:
    """The handed-back model under a time budget (docs/design.md, "The time budget"): member ``i``
    is retrained on train+val and checked (``train_final``) when ``retrain(i)``; otherwise its
    trial's own model is used (``trial_model``: the kept weights, ``None`` when this process did
    not keep them), re-created on the train split with the trial's seed when ``reproduce(i)``
    allows the training, and left out when not (the first member is always handed back).
    ``on_member(i, k, trial, retrained)`` is called before each member."""
    import time

    started = time.perf_counter()
    finals: list[FinalModel] = []
    for i, member in enumerate(members):
        again = retrain(i)
        if on_member:
            on_member(i, len(members), member.trial, again)
        if again:
            final = train_final(
                member.protocol,
                settings,
                prepared,
                expected=member.expected,
                expected_images=member.expected_images,
                progress=progress,
                micro_batch=micro_batch,
            )
            final.trial = member.trial
            finals.append(final)
            continue
        backbone = trial_model(member)
        why = f"member trial {member.trial}: the trial's own model (train split), not retrained: the time budget"
        if backbone is None:
            if finals and not reproduce(i):
                continue
            backbone, _, _ = retrain_and_test(
                member.protocol, settings, prepared, progress=progress, micro_batch=micro_batch, split="train"
            )
            why += "; re-created with the trial's seed (its weights were not kept by this process)"
        final = trial_model_final(backbone, settings, prepared, why)
        final.trial = member.trial
        finals.append(final)
    test_score = (
        finals[0].test_score
        if len(finals) == 1
        else ensemble_test_score([f.backbone for f in finals], settings, prepared)
    )
    return FinalEnsemble(finals, test_score, time.perf_counter() - started)


def handed_back_members(study, pick, best, val_images: int) -> list[Member]:
    """The trials whose retrains form the handed-back model (the pick's members; ``best`` alone
    without a pick), each with the score its retrain's check expects: the cross-validated score
    for a ``cv`` pick, else the trial's validation score on ``val_images`` images."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    numbers = pick.members if pick is not None else [best.number]
    chosen = pick.chosen if pick is not None else None
    members = []
    for number in numbers:
        trial = trials[number]
        if chosen is not None and chosen.trial == number:
            expected, images = chosen.oof_score, chosen.images
        else:
            expected, images = float(trial.value), val_images
        depths = (int(trial.user_attrs.get(FREEZE_ATTR, 0)), int(trial.user_attrs.get(REINIT_ATTR, 0)))
        members.append(Member(number, Protocol.from_dict(trial.params), expected, images, float(trial.value), depths))
    return members


def final_is_current(final: dict[str, Any], members: list[int], model_dir: Path) -> bool:
    """Whether the recorded final retrain (``ATTR["final"]``) is of these ``members`` and its
    model folder is still there (a resumed study keeps it instead of retraining)."""
    recorded = final.get("members") or ([final["trial"]] if "trial" in final else [])
    return (
        [int(v) for v in recorded] == list(members)
        and (model_dir / "model.safetensors").exists()
        and (model_dir / "config.json").exists()
    )
