"""The deliverable: one network derived from the handed-back ensemble's members.

What a timm or Hugging Face user loads from a folder is its root network alone, and every
prediction of an ensemble costs one network per member. ``--deliver`` folds the members into one
network (issue 28) in one of two ways:

- ``distilled``: a student trained on train+val with the first member's protocol (the pick's
  best), its loss mixing the labels with the members' mean softmax on each step's own augmented
  view (``train.distill.SoftTargets``). It costs one training, plus the members' forward passes.
- ``soup``: the uniform average of the members' weights that share the first member's
  re-initialised groups (those from the pretrained weights share a basin; a re-initialised group
  does not), with BatchNorm statistics recomputed on train+val (``update_bn``). Nearly free.

``ensemble`` (the default) keeps the members as they are: judged on images no trial saw
(``benchmarks/bench_deliver.py``), neither single network yet holds the ensemble's accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from autotransfer.core.protocol import Protocol
from autotransfer.core.settings import DELIVERABLES, StudySettings
from autotransfer.handback.final import FinalEnsemble, FinalModel, Member, is_broken
from autotransfer.search.prepared import PreparedData, split_batches

__all__ = [
    "DELIVERABLES",
    "DISTILL_WEIGHT",
    "DISTILL_TEMPERATURE",
    "Delivered",
    "deliver",
    "broken_deliverable",
    "distill",
    "soup",
]

#: The soft targets' share of the student's loss, and their temperature (``SoftTargets``).
DISTILL_WEIGHT = 0.8
DISTILL_TEMPERATURE = 2.0


@dataclass
class Delivered:
    """What the folder's root network is.

    Attributes:
        kind: one of ``DELIVERABLES``.
        model: the single network (``None`` for ``ensemble``: the members are the model).
        test_score: the deliverable's score on the test split (the ensemble's for ``ensemble``).
        member_scores: each member's test score, in the pick's order (trial, score).
        how: one sentence for the card: how it was made.
        seconds: wall time spent deriving it.
        ensemble_test: the members' ensemble's test score (``None``: one member).
    """

    kind: str
    model: FinalModel | None
    test_score: float
    member_scores: list[tuple[int | None, float]]
    how: str
    seconds: float = 0.0
    ensemble_test: float | None = None
    notes: list[str] = field(default_factory=list)
    #: the kind asked for (``settings.deliver``): differs from ``kind`` when the check refused it
    asked: str | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready: what the folder's config and the study record."""
        return {
            "kind": self.kind,
            "asked": self.asked or self.kind,
            "how": self.how,
            "test": self.test_score,
            "ensemble_test": self.ensemble_test,
            "members": [{"trial": t, "test": s} for t, s in self.member_scores],
            "seconds": round(self.seconds, 1),
        }


def deliver(
    kind: str,
    ensemble: FinalEnsemble,
    members: list[Member],
    settings: StudySettings,
    prepared: PreparedData,
    *,
    progress: Callable[[int, int], None] | None = None,
    micro_batch: int | None = None,
) -> Delivered:
    """The deliverable ``kind`` (one of ``DELIVERABLES``, as ``settings.deliver`` holds it) of
    ``ensemble``, whose ``members`` the pick chose. With one member there is nothing to fold: that
    member is the deliverable (kind ``single``) whatever ``kind`` asks."""
    scores = [(m.trial, m.test_score) for m in ensemble.members]
    if len(ensemble.members) == 1:
        only = ensemble.members[0]
        return Delivered("single", only, only.test_score, scores, "the pick's one network, as trained")
    if kind == "ensemble":
        k = len(ensemble.members)
        return Delivered(
            "ensemble", None, ensemble.test_score, scores, f"the mean softmax of {k} networks", 0.0, ensemble.test_score
        )
    started = time.perf_counter()
    if kind == "soup":
        model, how = soup(ensemble, members, settings, prepared)
    else:
        model, how = distill(
            ensemble, members[0].protocol, settings, prepared, progress=progress, micro_batch=micro_batch
        )
    seconds = time.perf_counter() - started
    why = broken_deliverable(model, ensemble, settings, prepared)
    k = len(ensemble.members)
    if why:  # the check reads train+val only, never the test split
        note = f"the {kind} network broke ({why}): the ensemble is handed back instead"
        return Delivered(
            "ensemble",
            None,
            ensemble.test_score,
            scores,
            f"the mean softmax of {k} networks",
            seconds,
            ensemble.test_score,
            [note],
            asked=kind,
        )
    return Delivered(kind, model, model.test_score, scores, how, seconds, ensemble.test_score, list(model.notes))


def broken_deliverable(
    model: FinalModel, ensemble: FinalEnsemble, settings: StudySettings, prepared: PreparedData
) -> str:
    """Why the single network broke, or ``""``: it must fit the train+val images about as well as
    the first member does, which trained its protocol on the labels alone (``final.is_broken``:
    short by more than max(0.10, 2 SE); the ensemble itself fits them better than any one network).
    Seen without the check: a student of a random search's members fell 11 points below all of
    them on unseen images, where its protocol trained unstably."""
    from autotransfer.train import evaluate

    data = split_batches(prepared, "trainval", settings, model.backbone.preprocessing)
    fit = float(evaluate(model.backbone, data, settings.metric))
    expected = float(evaluate(ensemble.members[0].backbone, data, settings.metric))
    model.fit_score = fit
    if is_broken(fit, expected, len(prepared.trainval)):
        return f"it fits train+val at {fit:.3f}, the first member, with the same protocol, at {expected:.3f}"
    return ""


def distill(
    ensemble: FinalEnsemble,
    protocol: Protocol,
    settings: StudySettings,
    prepared: PreparedData,
    *,
    weight: float = DISTILL_WEIGHT,
    temperature: float = DISTILL_TEMPERATURE,
    progress: Callable[[int, int], None] | None = None,
    micro_batch: int | None = None,
) -> tuple[FinalModel, str]:
    """One student trained on train+val with ``protocol`` for the study's budget, its loss mixing
    the labels with ``ensemble``'s soft targets; scored on the test split."""
    from autotransfer.backbones import create_backbone
    from autotransfer.search.objective import train_config_for
    from autotransfer.train import SoftTargets, evaluate, train_protocol, with_oom_retry

    def run(micro: int | None):
        backbone = create_backbone(settings.model, num_classes=settings.num_classes)
        config = train_config_for(protocol, settings, backbone.num_groups, micro_batch=micro)
        data = split_batches(prepared, "trainval", settings, backbone.preprocessing)
        teachers = SoftTargets([m.backbone.model.to(data.images.device) for m in ensemble.members], weight, temperature)
        result = train_protocol(
            backbone, data, None, config, metric=settings.metric, progress=progress, teachers=teachers
        )
        test = split_batches(prepared, "test", settings, backbone.preprocessing)
        return backbone, float(evaluate(backbone, test, settings.metric)), result

    (backbone, test_score, result), _ = with_oom_retry(run, micro_batch, settings.batch_size)
    k = len(ensemble.members)
    how = (
        f"distilled: one network trained on train+val with the best member's protocol, its loss"
        f" {weight:g} x the mean softmax of {k} members (temperature {temperature:g}) + {1 - weight:g} x the labels"
    )
    return FinalModel(backbone, test_score, None, "train+val", float(result.images_per_s)), how


def soup(
    ensemble: FinalEnsemble, members: list[Member], settings: StudySettings, prepared: PreparedData
) -> tuple[FinalModel, str]:
    """The uniform average of the members that re-initialised as many groups as the first did,
    BatchNorm statistics recomputed on train+val; scored on the test split."""
    import copy

    import torch

    from autotransfer.train import evaluate

    first = members[0].freeze_reinit[1] if members[0].freeze_reinit else None
    kept = [
        final
        for final, member in zip(ensemble.members, members)
        if (member.freeze_reinit[1] if member.freeze_reinit else None) == first
    ]
    backbone = copy.deepcopy(kept[0].backbone)
    states = [k.backbone.model.state_dict() for k in kept]
    averaged = {
        name: (
            torch.stack([s[name].float() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point()
            else value
        )
        for name, value in states[0].items()
    }
    backbone.model.load_state_dict(averaged)
    data = split_batches(prepared, "trainval", settings, backbone.preprocessing)
    _recompute_bn(backbone.model, data)
    test = split_batches(prepared, "test", settings, backbone.preprocessing)
    score = float(evaluate(backbone, test, settings.metric))
    left = len(ensemble.members) - len(kept)
    how = f"soup: the uniform weight average of {len(kept)} members, BatchNorm statistics recomputed on train+val" + (
        f" ({left} member(s) with other re-initialised groups left out)" if left else ""
    )
    return FinalModel(backbone, score, None, "train+val", float("nan")), how


def _recompute_bn(model: Any, data: Any, batch_size: int = 64) -> None:
    """BatchNorm running statistics of ``model`` re-estimated on ``data``'s plain views (a
    cumulative average over one pass, as ``torch.optim.swa_utils.update_bn`` does)."""
    import torch
    from torch.optim.swa_utils import update_bn

    with torch.no_grad():
        update_bn((x for x, _ in data.eval_batches(batch_size)), model)
    model.eval()
