"""Every fine-tuning knob and choice list, declared once: name, type, valid values, default, search range, export names.

``Protocol`` (a study's point), ``TrainConfig`` (one trial), ``ProtocolSpace`` (the search ranges),
the exports (YAML members, timm's train.py arguments, the script's ``MEMBERS``) and their checks
read this module; ``tests/core/test_knobs.py`` checks that they agree with it.

Two families of knobs: ``PROTOCOL_KNOBS`` are the searched values of ``Protocol``, in the order
they are suggested; ``TRIAL_KNOBS`` are what one protocol becomes for a backbone of ``G`` depth
groups (``Protocol.trial_values``): ``lr`` from ``log10_elr`` and ``momentum``, ``freeze`` and
``reinit`` from the fractions, the rest as they are. A trial's ``TrainConfig`` holds the trial
knobs plus the run settings (batch size, steps...), whose checks stay with it.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from autotransfer.core.errors import InvalidValueError, UserError

__all__ = [
    "Knob",
    "KnobValueError",
    "BN_MODES",
    "SCHEDULES",
    "OPTIMIZERS",
    "DEVICE_FORMS",
    "PROTOCOL_KNOBS",
    "TRIAL_KNOBS",
    "KNOBS",
    "OPTIMIZER",
    "SCHEDULE_KNOBS",
    "check_device",
    "check_number",
    "knob_table",
]

#: BatchNorm of the trainable pretrained groups: ``adapt`` runs it in train mode (its statistics
#: follow the target: AdaBN), ``frozen`` in eval mode (the source's statistics).
BN_MODES = ("adapt", "frozen")
#: How the trainable groups change over the budget (docs/design.md, "Schedules"):
#: ``one-stage`` trains groups f..G-1 from the first step; ``lp-ft`` trains only the new
#: parameters (head and re-initialised groups) for the first ``stage_frac`` of the budget, then
#: groups f..G-1 (Kumar et al., ICLR 2022); ``gradual`` starts like ``lp-ft`` and unfreezes the
#: pretrained groups one at a time from the top, the last at ``stage_frac`` of the budget
#: (Howard & Ruder, ACL 2018).
SCHEDULES = ("one-stage", "lp-ft", "gradual")
#: ``sgd``: classical momentum, no Nesterov; ``adamw``: betas ``(momentum, 0.999)``.
OPTIMIZERS = ("sgd", "adamw")
#: The device forms every entry point takes: ``auto`` (CUDA when present, else the CPU), ``cpu``,
#: ``cuda`` (the current GPU) and ``cuda:N`` (GPU number N). Whether a GPU is there is checked
#: where the device is used (``train.resolve_device``), not here.
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"(auto|cpu|cuda(:[0-9]+)?)\Z")


class KnobValueError(UserError, InvalidValueError):
    """A knob's value outside its declared values: one line naming the knob and the value. A
    ``UserError`` (the CLI prints it and exits 2) and an ``InvalidValueError`` (``except ValueError``
    still catches it), whichever entry point the value came through."""


def _bound(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}"


def check_number(name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False):
    """``value`` when it is a finite real number in the interval ``low..high`` (``*_open``: the end
    excluded); otherwise a one-line ``KnobValueError`` naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise KnobValueError(f"{name} must be a finite number, but got {value!r}")
    v = float(value)
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        if math.isinf(high) and not math.isinf(low):
            rule = f"> {_bound(low)}" if low_open else f">= {_bound(low)}"
        else:
            rule = f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
        raise KnobValueError(f"{name} must be {rule}, but got {value!r}")
    return value


def check_device(value: Any, what: str = "device") -> str:
    """``value`` when it is one of ``DEVICE_FORMS`` (``cuda:N`` with N a whole number); otherwise a
    one-line ``KnobValueError`` naming ``what`` and the value. The one device rule: ``TrainConfig``,
    ``StudySettings``, ``train.resolve_device`` and the worker plans all check with it."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise KnobValueError(f"{what} must be auto, cpu, cuda or cuda:N, but got {value!r}")
    return value


@dataclass(frozen=True)
class Knob:
    """One knob as every part of the package knows it.

    Attributes:
        name: the field name in ``Protocol`` / ``TrainConfig`` and the key in every export.
        kind: ``float``, ``int`` or ``choice``.
        default: the value a fresh ``Protocol`` (or ``TrainConfig``, for a trial knob) takes.
        doc: what it does, in one line.
        low, high, low_open, high_open: the valid values of a number (the interval ``check`` takes).
        choices: the valid values of a ``choice``.
        search: ``(low, high, log)``: the default search range of a searched float (``ProtocolSpace``);
            ``None`` for a choice (searched among ``choices``) or a knob no study searches.
        timm: the key of timm's train.py that means the same (``None``: train.py cannot express it;
            ``handback.export.timm_unexpressed`` says so). ``momentum`` maps to ``momentum`` under SGD
            and to ``opt_betas[0]`` under AdamW.
    """

    name: str
    kind: str
    default: Any
    doc: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    search: tuple[float, float, bool] | None = None
    timm: str | None = None

    def check(self, value: Any, what: str | None = None) -> Any:
        """``value`` when it is valid for this knob; otherwise a one-line ``KnobValueError`` naming
        ``what`` (default: the knob's name) and the value, the same from every entry point."""
        label = what or self.name
        if self.kind == "choice":
            if value not in self.choices:
                raise KnobValueError(f"{label} must be one of {list(self.choices)!r}, but got {value!r}")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < self.low:
                raise KnobValueError(f"{label} must be an integer >= {_bound(self.low)}, but got {value!r}")
            return value
        return check_number(label, value, self.low, self.high, self.low_open, self.high_open)


def _unit(
    name: str,
    default: float,
    doc: str,
    search: tuple[float, float, bool],
    *,
    high_open: bool = False,
    timm: str | None = None,
) -> Knob:
    """A float knob valid in [0, 1] (``high_open``: [0, 1))."""
    return Knob(name, "float", default, doc, low=0.0, high=1.0, high_open=high_open, search=search, timm=timm)


#: The searched values of ``Protocol``, in the order a trial suggests them. The ranges are wide
#: (docs/design.md: with short budgets the best SGD lr sat at the top of a 0.001-0.03 grid, so ELR
#: must reach well above 0.03 * 10, lr 0.03 at momentum 0.9).
PROTOCOL_KNOBS: tuple[Knob, ...] = (
    Knob(
        "log10_elr",
        "float",
        -1.5,
        "log10 of the effective learning rate lr / (1 - momentum) (Li et al., ICLR 2020)",
        search=(-3.5, 0.5, False),
    ),
    _unit(
        "momentum",
        0.9,
        "SGD momentum (nesterov off); AdamW's beta1",
        (0.0, 0.95, False),
        high_open=True,
        timm="momentum",
    ),
    Knob(
        "head_lr_mult",
        "float",
        10.0,
        "the new head's lr is lr * head_lr_mult",
        low=0.0,
        low_open=True,
        search=(1.0, 100.0, True),
    ),
    _unit("freeze_frac", 0.0, "frozen depth groups f, as a fraction of G (rounded)", (0.0, 1.0, False)),
    _unit("reinit_frac", 0.0, "re-initialised groups r, a fraction of the G - f trainable ones", (0.0, 1.0, False)),
    Knob(
        "layer_decay",
        "float",
        1.0,
        "layer-wise lr decay (1 = none): group g gets lr * decay**(G-1-g)",
        low=0.0,
        high=1.0,
        low_open=True,
        search=(0.5, 1.0, False),
    ),
    Knob(
        "weight_decay",
        "float",
        1e-5,
        "L2 / decoupled weight decay",
        low=0.0,
        search=(1e-6, 1e-2, True),
        timm="weight_decay",
    ),
    Knob("bn_mode", "choice", "adapt", "BatchNorm of the trainable pretrained groups", choices=BN_MODES),
    Knob(
        "l2sp",
        "float",
        0.0,
        "L2-SP strength alpha (0 = off): alpha/2 ||w - w0||^2 towards the source weights (Li et al. 2018)",
        low=0.0,
        search=(0.0, 0.1, False),
    ),
    Knob("schedule", "choice", "one-stage", "when groups f..G-1 start to train (SCHEDULES)", choices=SCHEDULES),
    _unit(
        "stage_frac",
        0.3,
        "lp-ft: the budget's fraction that trains only the new parameters; gradual: when the last group joins",
        (0.1, 0.8, False),
        high_open=True,
    ),
)

_BY_NAME = {k.name: k for k in PROTOCOL_KNOBS}
#: The knobs a study suggests only when it searches schedules (``ProtocolSpace.searches_schedule``).
SCHEDULE_KNOBS = ("schedule", "stage_frac")

#: What one protocol becomes for a backbone of G groups (``Protocol.trial_values``), in the order the
#: exports list them: the ``TrainConfig`` fields of a trial, an export's members, the script's ``MEMBERS``.
TRIAL_KNOBS: tuple[Knob, ...] = (
    Knob(
        "lr",
        "float",
        0.01,
        "base lr of the backbone's last trainable group: 10**log10_elr * (1 - momentum)",
        low=0.0,
        low_open=True,
        timm="lr",
    ),
    _BY_NAME["momentum"],
    _BY_NAME["head_lr_mult"],
    Knob("freeze", "int", 0, "f in [0, G]: groups 0..f-1 get no gradient and run in eval mode", low=0),
    Knob("reinit", "int", 0, "r in [0, G - f]: the last r depth groups are re-initialised", low=0),
    _BY_NAME["layer_decay"],
    Knob("weight_decay", "float", 0.0, _BY_NAME["weight_decay"].doc, low=0.0, timm="weight_decay"),
    _BY_NAME["bn_mode"],
    _BY_NAME["l2sp"],
    _BY_NAME["schedule"],
    _BY_NAME["stage_frac"],
)

#: The study's optimizer (``StudySettings.optimizer``, ``TrainConfig.optimizer``).
OPTIMIZER = Knob("optimizer", "choice", "sgd", "the optimizer: " + ", ".join(OPTIMIZERS), choices=OPTIMIZERS)

#: Every knob by name; a trial knob of the same name as a protocol knob (``weight_decay``) differs
#: only in its default, so the name gives its valid values either way.
KNOBS: dict[str, Knob] = {k.name: k for k in (*TRIAL_KNOBS, *PROTOCOL_KNOBS, OPTIMIZER)}


def _valid(knob: Knob) -> str:
    """A knob's valid values in words: the choices, or its interval."""
    if knob.kind == "choice":
        return " / ".join(f"`{c}`" for c in knob.choices)
    if knob.kind == "int":
        return f"integer >= {_bound(knob.low)}"
    if math.isinf(knob.low) and math.isinf(knob.high):
        return "any finite"
    if math.isinf(knob.high):
        return f"> {_bound(knob.low)}" if knob.low_open else f">= {_bound(knob.low)}"
    return f"{'(' if knob.low_open else '['}{_bound(knob.low)}, {_bound(knob.high)}{')' if knob.high_open else ']'}"


def knob_table() -> str:
    """The Markdown table of every protocol and trial knob that docs/design.md ("Knobs") shows:
    generated here, so the docs cannot drift from the declaration (``tests/core/test_knobs.py``)."""
    rows = ["| knob | in | valid | default | searched | timm train.py |", "|---|---|---|---|---|---|"]
    shared = [k for k in PROTOCOL_KNOBS if k in TRIAL_KNOBS]
    for knob in (*PROTOCOL_KNOBS, *(k for k in TRIAL_KNOBS if k not in shared)):
        where = "Protocol, TrainConfig" if knob in shared else "Protocol" if knob in PROTOCOL_KNOBS else "TrainConfig"
        if knob.search is not None:
            low, high, log = knob.search
            searched = f"[{_bound(low)}, {_bound(high)}]" + (" log" if log else "")
        else:
            searched = "its choices" if knob in PROTOCOL_KNOBS else "from the protocol"
        timm = f"`{knob.timm}`" if knob.timm else "-"
        rows.append(f"| `{knob.name}` | {where} | {_valid(knob)} | `{knob.default}` | {searched} | {timm} |")
    return "\n".join(rows) + "\n"
