"""Soft targets for distillation: a student trains on its labels and on teachers' mean softmax."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from autotransfer.core.errors import UserError

__all__ = ["SoftTargets"]


@dataclass(frozen=True)
class SoftTargets:
    """The teachers of a distilled student (Hinton et al. 2015).

    Each step's batch ``x`` ``(B, 3, R, R)`` (the student's own augmented view) goes through every
    teacher in eval mode; the target is their mean softmax at ``temperature``. The student's loss is
    ``(1 - weight) * CE(labels) + weight * T^2 * KL(target || softmax(logits / T))``.

    Attributes:
        models: the teachers (modules on the training device; they are not trained).
        weight: the share of the soft-target term, in [0, 1].
        temperature: ``T`` > 0, the softening of both distributions.
    """

    models: Sequence[torch.nn.Module]
    weight: float = 0.8
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not self.models:
            raise UserError("SoftTargets needs at least one teacher model, but got none")
        if not 0.0 <= self.weight <= 1.0:
            raise UserError(f"SoftTargets.weight must be in [0, 1], but got {self.weight!r}")
        if not self.temperature > 0:
            raise UserError(f"SoftTargets.temperature must be > 0, but got {self.temperature!r}")

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` float32: the teachers' mean softmax of ``x`` at ``temperature``."""
        probas = []
        for model in self.models:
            model.eval()
            probas.append(torch.softmax(model(x).float() / self.temperature, dim=1))
        return torch.stack(probas).mean(dim=0)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The student's mean loss on one batch: ``logits`` ``(B, C)``, ``labels`` ``(B,)``,
        ``targets`` ``(B, C)`` from ``targets``."""
        hard = F.cross_entropy(logits, labels)
        log_student = F.log_softmax(logits / self.temperature, dim=1)
        soft = F.kl_div(log_student, targets, reduction="batchmean") * self.temperature**2
        return (1.0 - self.weight) * hard + self.weight * soft
