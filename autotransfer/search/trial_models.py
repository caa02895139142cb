"""The trained models of a study's best trials, kept on disk so the job can hand them back without
retraining (docs/design.md, "The time budget": the final retrain on train+val is a stage the
budget may skip).

Each trial's model is trained on the train split and validated on the validation split; its
weights are otherwise dropped at the end of the trial. ``TrialModels`` keeps those of the
``keep`` best trials this process ran (by settled validation score), one ``safetensors`` file per
trial under ``folder``, and deletes a file once its trial falls out of the top. A trial run by
another worker, or by an earlier process, has no file here: ``load`` returns ``None`` for it and
the caller re-creates that model (``handback.final``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["TrialModels", "settled_of_history", "KEEP"]

#: How many trial models are kept: the ensemble's size (``pick.PICK_TOP``), plus one spare for a
#: member the pick skips as a duplicate protocol.
KEEP = 4
SETTLE_EVALS = 3  # as ``pick.SETTLE_EVALS``; repeated here so this module stays below ``pick``


def settled_of_history(history: list[tuple[int, float]]) -> float:
    """The mean of the last ``SETTLE_EVALS`` validation scores of ``history`` ((step, score) pairs)."""
    tail = [float(v) for _, v in history[-SETTLE_EVALS:]]
    return sum(tail) / len(tail) if tail else float("-inf")


class TrialModels:
    """The weights of the best ``keep`` trials of one study that this process trained.

    ``offer`` is called with every finished trial's model; ``load`` gives a kept trial's model back
    as a fresh backbone (``make_backbone``) with those weights.
    """

    def __init__(self, folder: str | Path, keep: int = KEEP) -> None:
        self.folder = Path(folder)
        self.keep = keep
        self.scores: dict[int, float] = {}
        if self.folder.is_dir():  # an earlier run of this study in the same folder
            for path in self.folder.glob("*.safetensors"):
                if path.stem.isdigit():
                    self.scores.setdefault(int(path.stem), float("-inf"))

    def path(self, number: int) -> Path:
        return self.folder / f"{int(number)}.safetensors"

    def offer(self, number: int, score: float, model: Any) -> bool:
        """Keep ``model`` (a ``torch.nn.Module``) of trial ``number`` if ``score`` ranks among the
        ``keep`` best offered; returns whether it was kept. Files that fall out are deleted."""
        from safetensors.torch import save_file

        ranked = sorted({**self.scores, number: score}.items(), key=lambda kv: (kv[1], -kv[0]), reverse=True)
        top = {n for n, _ in ranked[: self.keep]}
        if number not in top:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        tmp = self.path(number).with_suffix(".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, self.path(number))
        self.scores[number] = score
        for n in [n for n in self.scores if n not in top]:
            self.path(n).unlink(missing_ok=True)
            del self.scores[n]
        return True

    def has(self, number: int) -> bool:
        return self.path(number).is_file()

    def load(self, number: int, make_backbone: Callable[[], Any]) -> Any | None:
        """Trial ``number``'s backbone with its kept weights, in eval mode; ``None`` if not kept
        here or unreadable (the caller re-creates it)."""
        from safetensors.torch import load_file

        if not self.has(number):
            return None
        try:
            state = load_file(str(self.path(number)))
        except Exception:  # a torn file from a killed process: re-create the model instead
            return None
        backbone = make_backbone()
        try:
            backbone.model.load_state_dict(state, strict=True)
        except RuntimeError:  # keys or shapes of another model (a changed study): re-create it
            return None
        backbone.model.eval()
        return backbone

    def clear(self) -> None:
        """Delete every kept file (after the job handed its model back)."""
        for n in list(self.scores):
            self.path(n).unlink(missing_ok=True)
        self.scores.clear()
        try:
            self.folder.rmdir()
        except OSError:
            pass
