"""A fine-tuning protocol (one point of the search space) and the space it is drawn from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence
from typing import Protocol as TypingProtocol

from autotransfer.core.errors import InvalidValueError
from autotransfer.core.knobs import BN_MODES, KNOBS, PROTOCOL_KNOBS, SCHEDULE_KNOBS, SCHEDULES, TRIAL_KNOBS
from autotransfer.core.validation import known_fields

__all__ = [
    "Protocol",
    "ProtocolSpace",
    "ParamRange",
    "SEARCHED",
    "SCHEDULES",
    "describe_schedule",
    "schedule_words",
    "freeze_depth",
    "reinit_count",
]

#: The searched parameters, in the order they are suggested (``core.knobs.PROTOCOL_KNOBS``).
SEARCHED = tuple(k.name for k in PROTOCOL_KNOBS)


def describe_schedule(schedule: str, stage_frac: float) -> str:
    """The schedule in words, as the reports show it: ``one-stage``, ``lp-ft (first stage 30% of
    the budget)``, ``gradual (last group unfrozen at 30% of the budget)``."""
    if schedule == "lp-ft":
        return f"lp-ft (first stage {stage_frac:.0%} of the budget)"
    if schedule == "gradual":
        return f"gradual (last group unfrozen at {stage_frac:.0%} of the budget)"
    return str(schedule)


def schedule_words(values: "Protocol | Mapping[str, Any]") -> str:
    """``describe_schedule`` of a protocol, or of a mapping of its values (a record, an export's
    member); a missing ``schedule`` or ``stage_frac`` takes the declared default (``core.knobs``:
    a record written before schedules existed reads as one-stage)."""
    if isinstance(values, Protocol):
        return describe_schedule(values.schedule, values.stage_frac)
    schedule = values.get("schedule", KNOBS["schedule"].default)
    return describe_schedule(schedule, float(values.get("stage_frac", KNOBS["stage_frac"].default)))


def freeze_depth(freeze_frac: float, num_groups: int) -> int:
    """``f``: the number of frozen depth groups for a fraction of ``G`` (rounded)."""
    KNOBS["freeze_frac"].check(freeze_frac)
    return int(round(freeze_frac * num_groups))


def reinit_count(reinit_frac: float, num_groups: int, freeze: int) -> int:
    """``r``: re-initialised groups, a fraction of the ``G - f`` groups left trainable."""
    KNOBS["reinit_frac"].check(reinit_frac)
    return int(round(reinit_frac * (num_groups - freeze)))


@dataclass(frozen=True)
class Protocol:
    """One fine-tuning protocol in the study's vocabulary (docs/design.md).

    ``lr`` follows from the effective learning rate: ``lr = 10**log10_elr * (1 - momentum)``
    (Li et al., ICLR 2020). Freeze and reinit are fractions; ``integers(G)`` gives ``(f, r)``.
    ``schedule`` and ``stage_frac`` say when groups f..G-1 start to train (``SCHEDULES``);
    ``stage_frac`` is ignored by ``one-stage``.
    """

    log10_elr: float = -1.5
    momentum: float = 0.9
    head_lr_mult: float = 10.0
    freeze_frac: float = 0.0
    reinit_frac: float = 0.0
    layer_decay: float = 1.0
    weight_decay: float = 1e-5
    bn_mode: str = "adapt"
    l2sp: float = 0.0
    schedule: str = "one-stage"
    stage_frac: float = 0.3

    def __post_init__(self) -> None:
        for knob in PROTOCOL_KNOBS:
            knob.check(getattr(self, knob.name))

    @property
    def elr(self) -> float:
        """The effective learning rate ``lr / (1 - momentum)``."""
        return 10.0**self.log10_elr

    @property
    def lr(self) -> float:
        """The optimizer learning rate that gives this ELR at this momentum."""
        return self.elr * (1.0 - self.momentum)

    def integers(self, num_groups: int) -> tuple[int, int]:
        """``(f, r)``: frozen groups and re-initialised groups for a backbone with ``G`` groups."""
        f = freeze_depth(self.freeze_frac, num_groups)
        return f, reinit_count(self.reinit_frac, num_groups, f)

    def trial_values(self, num_groups: int) -> dict[str, Any]:
        """The ``TRIAL_KNOBS`` of this protocol for a backbone with ``G`` groups, in their order:
        ``lr``, ``freeze`` and ``reinit`` derived, the others as they are. ``TrainConfig`` fields,
        an export's members and the script's ``MEMBERS`` are these values."""
        freeze, reinit = self.integers(num_groups)
        derived = {"lr": self.lr, "freeze": freeze, "reinit": reinit}
        return {k.name: derived[k.name] if k.name in derived else getattr(self, k.name) for k in TRIAL_KNOBS}

    def within_schedules(self, schedules: Sequence[str]) -> "Protocol":
        """This protocol, or the same with the first of ``schedules`` (in ``SCHEDULES`` order:
        one-stage when searched) when its own schedule is not among them: a study searching only
        ``schedules`` must enqueue one of its categorical's choices."""
        if not schedules:
            raise InvalidValueError("schedules must not be empty")
        return self if self.schedule in schedules else replace(self, schedule=schedules[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Protocol":
        """Build from a mapping (trial parameters, an export); missing keys take defaults, and an
        unknown key is a one-line ``UserError`` naming it (a typo must not vanish silently)."""
        return cls(**known_fields(cls, values, "protocol parameters"))


@dataclass(frozen=True)
class ParamRange:
    """A search range for one float parameter (``log`` = sample on a log scale)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise InvalidValueError(f"range low must be <= high, but got [{self.low!r}, {self.high!r}]")
        if self.log and self.low <= 0:
            raise InvalidValueError(f"a log range needs low > 0, but got {self.low!r}")

    def clip(self, value: float) -> float:
        return min(max(value, self.low), self.high)


class _Suggester(TypingProtocol):
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def _default_ranges() -> dict[str, ParamRange]:
    """Every searched float's range, as ``core.knobs`` declares it."""
    return {k.name: ParamRange(*k.search) for k in PROTOCOL_KNOBS if k.search is not None}


@dataclass
class ProtocolSpace:
    """Search ranges for every searched parameter, plus the BN-mode choices.

    A parameter whose range has ``low == high`` is fixed (suggested as a one-value range).
    With ``schedules == ("one-stage",)`` neither ``schedule`` nor ``stage_frac`` is suggested
    (trials carry no such parameters and run one-stage, as studies did before schedules existed).
    """

    ranges: dict[str, ParamRange] = field(default_factory=_default_ranges)
    bn_modes: tuple[str, ...] = BN_MODES
    schedules: tuple[str, ...] = SCHEDULES

    def __post_init__(self) -> None:
        missing = {k.name for k in PROTOCOL_KNOBS if k.kind != "choice"} - set(self.ranges)
        if missing:
            raise InvalidValueError(f"ProtocolSpace is missing ranges for {sorted(missing)!r}")
        unknown = [s for s in self.schedules if s not in SCHEDULES]
        if unknown or not self.schedules:
            raise InvalidValueError(
                f"schedules must be a non-empty subset of {list(SCHEDULES)!r}, but got {self.schedules!r}"
            )

    @property
    def searches_schedule(self) -> bool:
        """Whether trials suggest ``schedule`` and ``stage_frac`` (not for one-stage only)."""
        return tuple(self.schedules) != ("one-stage",)

    def suggested(self) -> tuple[str, ...]:
        """The parameters a trial suggests, in ``SEARCHED`` order: the schedule's
        (``core.knobs.SCHEDULE_KNOBS``) only when the study searches schedules."""
        return tuple(n for n in SEARCHED if self.searches_schedule or n not in SCHEDULE_KNOBS)

    def choices(self, name: str) -> tuple[str, ...]:
        """The choices this space searches for the categorical parameter ``name``."""
        return {"bn_mode": self.bn_modes, "schedule": self.schedules}[name]

    def suggest(self, trial: _Suggester) -> Protocol:
        """Draw one protocol through an optuna-style ``trial`` (``suggest_float`` ...)."""
        values: dict[str, Any] = {}
        for name in self.suggested():
            if KNOBS[name].kind == "choice":
                values[name] = trial.suggest_categorical(name, list(self.choices(name)))
                continue
            rng = self.ranges[name]
            values[name] = trial.suggest_float(name, rng.low, rng.high, log=rng.log)
        return Protocol(**values)

    def clip(self, protocol: Protocol) -> Protocol:
        """The nearest protocol inside the ranges (for enqueueing fixed protocols)."""
        values = protocol.to_dict()
        for name, rng in self.ranges.items():
            values[name] = rng.clip(float(values[name]))
        if values["bn_mode"] not in self.bn_modes:
            values["bn_mode"] = self.bn_modes[0]
        return Protocol(**values).within_schedules(self.schedules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranges": {k: [r.low, r.high, r.log] for k, r in self.ranges.items()},
            "bn_modes": list(self.bn_modes),
            "schedules": list(self.schedules),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ProtocolSpace":
        """The inverse of ``to_dict``. A space stored before schedules existed reads as one-stage
        only, so a resumed old study keeps the space its trials were drawn from."""
        ranges = {k: ParamRange(float(v[0]), float(v[1]), bool(v[2])) for k, v in values["ranges"].items()}
        fixed = Protocol().stage_frac
        ranges.setdefault("stage_frac", ParamRange(fixed, fixed))
        schedules = tuple(values.get("schedules", ("one-stage",)))
        return cls(ranges=ranges, bn_modes=tuple(values["bn_modes"]), schedules=schedules)

    @staticmethod
    def centred(
        centre: Protocol,
        widths: dict[str, float],
        bounds: "ProtocolSpace | None" = None,
    ) -> "ProtocolSpace":
        """Ranges ``centre ± width`` per parameter (log params: ± width in log10), clipped to ``bounds``.

        Parameters without a width keep the bounds' full range.
        """
        bounds = bounds or ProtocolSpace()
        ranges: dict[str, ParamRange] = {}
        for name, outer in bounds.ranges.items():
            if name not in widths:
                ranges[name] = outer
                continue
            c = float(getattr(centre, name))
            w = float(widths[name])
            if outer.log:
                lo, hi = c / 10.0**w, c * 10.0**w
            else:
                lo, hi = c - w, c + w
            lo, hi = max(lo, outer.low), min(hi, outer.high)
            if lo > hi:  # centre outside the bounds: collapse onto the nearest bound
                lo = hi = outer.clip(c)
            ranges[name] = ParamRange(lo, hi, outer.log)
        return ProtocolSpace(ranges=ranges, bn_modes=bounds.bn_modes, schedules=bounds.schedules)
