"""The quadrant prior: a protocol centre and search ranges, continuous in (log10 N, similarity).

The survey's map (Plested & Gedeon, "Deep transfer learning for image classification: a
survey", arXiv 2205.09904) gives four protocol families, one per quadrant of size x similarity
(``autotransfer.prior.placement.DECISION_TABLE``). Here each family becomes the limit of a
smooth rule, so that a task between quadrants gets a protocol between theirs:

- similar -> low ELR and deep freezing; dissimilar -> higher ELR, more re-initialised groups,
  shallower freezing (survey; Li et al., "Rethinking the hyperparameters for fine-tuning",
  ICLR 2020, for the ELR);
- small N -> more freezing and more regularisation (weight decay, L2-SP) (survey);
- the freeze depth follows the excess-divergence profile: freeze up to the (smoothed) depth where the
  excess first crosses ``excess_threshold()``, then scale by size and similarity;
- the schedule (``schedule_rule``): one stage for large targets; for small ones LP-FT when the
  features transfer (Kumar et al., ICLR 2022), gradual unfreezing when they do not (Howard &
  Ruder, ACL 2018).

Notation: ``s`` = similarity, ``d = 1 - s``, ``z`` = ``size_score`` (0 small ... 1 large).
When a transferability ``t`` is given (LogME over chance, ``transferability_from_logme``), the
scalar rules (ELR, head lr, re-init, freeze scale, L2-SP, layer decay) read the effective
similarity ``s = effective_similarity(similarity, t)`` instead: measured transfer gains follow
LogME, not the label-blind similarity (benchmarks/RESULTS.md, "Estimator follow-ups (session
2)"). The quadrant, the freeze depth along the excess-divergence profile and the BN mode stay
on the domain similarity: they are about where and how the input statistics differ.
Every rule below is a module constant or a one-line formula with its source.

The module also gives the survey's fixed protocols and the controls that a study enqueues.

Over 400 lines: each rule of the survey's map is a short function with its citation and rationale
line; splitting them would scatter the one table they implement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from autotransfer.core.errors import InvalidValueError
from autotransfer.core.protocol import Protocol, ProtocolSpace
from autotransfer.prior.placement import (
    BN_W2_SIMILARITY_SCALE,
    DECISION_TABLE,
    SIMILAR_THRESHOLD,
    TRANSFER_WEIGHT,
    effective_similarity,
    excess_threshold,
    size_score,
)

__all__ = [
    "Prior",
    "quadrant_prior",
    "crossing_depth",
    "recommended_protocol",
    "less_similar_protocol",
    "linear_probe_protocol",
    "scratch_protocols",
    "probe_control_protocols",
    "WIDTHS",
    "exploring_space",
    "schedule_rule",
    "with_schedules",
]

# --- ELR (log10 of lr / (1 - momentum)) -----------------------------------------------------
#: Centre for a same-domain target: the survey's recommended lr ~0.003-class at momentum 0.9,
#: i.e. ELR 0.03. Li et al. (ICLR 2020) show the optimal ELR is lower for targets similar to
#: the source.
ELR_SIMILAR = math.log10(0.03)
#: Centre for a far target: the survey's "less similar" lr ~0.025-class at momentum 0.9, i.e.
#: ELR 0.25. Li et al. (ICLR 2020): the optimal ELR rises as similarity falls.
ELR_DISSIMILAR = math.log10(0.25)
#: The ELR range always reaches at least ELR 1 (lr 0.1 at momentum 0.9). Measurement
#: (docs/design.md): "with short budgets the best SGD lr sat at the top of a 0.001-0.03 grid, so
#: search ranges must reach well above 0.03".
ELR_TOP = 0.0

# --- momentum -----------------------------------------------------------------------------
#: Li et al. (ICLR 2020): momentum 0.9 is the standard; at a fixed ELR it matters little, so it
#: is searched only narrowly around 0.9.
MOMENTUM = 0.9

# --- head lr multiplier (log10) -----------------------------------------------------------
#: Measurement (docs/design.md): the zero-initialised head "deserves its own lr". x10 for similar
#: targets, where the backbone's ELR is low and the head does most of the learning (the classic
#: fine-tuning recipe: new layers at 10x); x3.2 for far targets, whose backbone ELR is already
#: ~8x higher, so that the head's own ELR stays within a factor of ~3 across the map.
HEAD_MULT_SIMILAR = 1.0
HEAD_MULT_DISSIMILAR = 0.5

# --- freeze ---------------------------------------------------------------------------------
#: Softness of the crossing depth (``crossing_depth``), as a fraction of the similarity scale:
#: 0.1 x 0.35 = 0.035 in BN-W2 units, about the spread of same-domain BN-W2 values (photos at
#: 0.04, docs/design.md), so a group within noise of the threshold counts half.
CROSSING_SOFTNESS = 0.1

# --- re-initialisation ---------------------------------------------------------------------
#: Largest centre for ``reinit_frac`` (a fully dissimilar, large target): survey, large +
#: dissimilar -> "fine-tune with more re-initialised groups, or from scratch" (from scratch is
#: a control of its own). Small targets get 40% of it: fresh weights need data to relearn.
REINIT_MAX = 0.6
REINIT_SMALL_SHARE = 0.4

# --- regularisation ------------------------------------------------------------------------
#: log10 weight decay: 1e-5 for large targets, 10**-3.5 ~ 3e-4 for small ones. Survey:
#: regularisation matters more the smaller the target.
WD_LARGE = -5.0
WD_SMALL_EXTRA = 1.5
#: L2-SP strength for a small, same-domain target (Li, Grandvalet & Davoine, ICML 2018), scaled
#: by ``s`` because reference-based regularisation does not help dissimilar targets (Li et al.,
#: ICLR 2020) and by ``1 - z`` because it matters for small targets (survey).
L2SP_MAX = 0.05
#: Layer-wise lr decay for a small, same-domain target: lower layers, already right, learn
#: slower (discriminative fine-tuning, discussed in the survey); 1 (no decay) when large or far.
LAYER_DECAY_MIN = 0.7

# --- schedule (docs/design.md, "Schedules") -------------------------------------------------------
#: From this size score on, the centre trains in one stage: with plenty of data the survey's
#: large rows fine-tune everything, and a protective first stage would spend budget the body needs.
#: 0.5 is the quadrant's own small/large split (``size_score``).
SCHEDULE_LARGE = 0.5
#: A small target whose effective similarity reaches this uses LP-FT (Kumar et al., "Fine-Tuning
#: can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022: when the
#: features are good, a head that starts at zero sends them large, distorting gradients; fit the
#: head first). Below it, gradual unfreezing (Howard & Ruder, "Universal Language Model
#: Fine-tuning for Text Classification", ACL 2018: unfreeze from the top against catastrophic
#: forgetting on small targets) lets the far target adapt the top groups before the lower ones.
#: The quadrant's own similar/dissimilar split (``SIMILAR_THRESHOLD``).
SCHEDULE_SIMILAR = SIMILAR_THRESHOLD
#: LP-FT's head-only stage as a share of the budget: long enough for the zero-initialised head (at
#: its x3-x10 lr) to fit on the frozen features (Kumar et al. probe to convergence first), short
#: enough to leave most of a fixed budget to fine-tuning. The protocol's default stage.
LPFT_STAGE = 0.3
#: Gradual unfreezing's stage (the last group joins here): ULMFiT unfreezes one group per epoch;
#: a small target's budget is ~20 epochs (``default_steps``), so 8 groups take 8/20 = 0.4 of it.
GRADUAL_STAGE = 0.4

#: The prior's spread: one standard deviation per parameter (log parameters in decades) of the
#: sampler's start-up draws around the centre (``search/sampler.py``). It says how far the prior
#: trusts its centre; it no longer fences the search in (``exploring_space``). ELR 1 decade: Li et
#: al. (ICLR 2020) find the optimal ELR dataset-dependent, so the draws span two decades around the
#: centre. Freeze 0.35 and re-init 0.3: measured (issue 14), deeper freezing and the linear probe
#: beat most protocols on animals and elpv at N = 200 while the quadrant centre sat near f = 0, so
#: a draw reaches every depth of an 8-group backbone within two standard deviations.
WIDTHS: dict[str, float] = {
    "log10_elr": 1.0,
    "momentum": 0.05,
    "head_lr_mult": 0.5,
    "freeze_frac": 0.35,
    "reinit_frac": 0.3,
    "layer_decay": 0.15,
    "weight_decay": 1.0,
    "l2sp": 0.05,
}
#: The one parameter the search keeps near the centre: at a fixed ELR momentum matters little
#: (Li et al., ICLR 2020), so it is searched only within +-0.05 of 0.9.
MOMENTUM_WIDTH = 0.05


def exploring_space(centre: Protocol, bounds: ProtocolSpace | None = None) -> ProtocolSpace:
    """The searched space around a prior's centre: the full ``bounds`` for every parameter (freeze
    depth 0 to G, re-init 0 to all, ELR over four decades, BN both ways), momentum within
    ``MOMENTUM_WIDTH`` of the centre. The prior centres the search through its enqueued centre and
    the sampler's start-up draws (``WIDTHS``), never by narrowing the ranges: measured (issue 14),
    ranges of centre +-0.25 kept ``freeze_frac`` in [0, 0.25] and made the deeper freezing that won
    on two targets reachable only by enqueued candidates.
    """
    return ProtocolSpace.centred(centre, {"momentum": MOMENTUM_WIDTH}, bounds or ProtocolSpace())


@dataclass
class Prior:
    """A protocol centre, the search ranges around it, and why.

    Attributes:
        centre: the prior protocol (enqueued first by the search).
        space: the searched ranges (``exploring_space``: wide, the centre inside).
        spread: one standard deviation per parameter of the sampler's start-up draws around
            ``centre`` (log parameters in decades; default ``WIDTHS``).
        quadrant: the survey quadrant, e.g. ``small+dissimilar`` (arXiv 2205.09904).
        rationale: human-readable lines, one per rule, each naming its source.
        num_groups: ``G`` of the backbone the integers ``(f, r)`` refer to.
        kind: where it came from: ``quadrant`` (this module) or ``surface``.
        candidates: other protocols to try right after the centre, each with where it came from
            (a surface prior: the measured optima of the nearest recorded studies).
    """

    centre: Protocol
    space: ProtocolSpace
    quadrant: str
    rationale: list[str] = field(default_factory=list)
    num_groups: int = 0
    kind: str = "quadrant"
    candidates: list[tuple[str, Protocol]] = field(default_factory=list)
    spread: dict[str, float] = field(default_factory=lambda: dict(WIDTHS))

    def integers(self) -> tuple[int, int]:
        """``(f, r)`` of the centre for ``num_groups`` groups."""
        return self.centre.integers(self.num_groups)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, including the centre's integers ``f`` and ``r``."""
        f, r = self.integers()
        return {
            "kind": self.kind,
            "quadrant": self.quadrant,
            "num_groups": self.num_groups,
            "centre": self.centre.to_dict(),
            "freeze": f,
            "reinit": r,
            "space": self.space.to_dict(),
            "spread": dict(self.spread),
            "rationale": list(self.rationale),
            "candidates": [{"source": source, "protocol": p.to_dict()} for source, p in self.candidates],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Prior":
        """The inverse of ``to_dict`` (the integers are recomputed, not read)."""
        return cls(
            centre=Protocol.from_dict(values["centre"]),
            space=ProtocolSpace.from_dict(values["space"]),
            quadrant=str(values["quadrant"]),
            rationale=[str(line) for line in values.get("rationale", [])],
            num_groups=int(values.get("num_groups", 0)),
            kind=str(values.get("kind", "quadrant")),
            candidates=[(str(c["source"]), Protocol.from_dict(c["protocol"])) for c in values.get("candidates", [])],
            spread={str(k): float(v) for k, v in (values.get("spread") or WIDTHS).items()},
        )


def crossing_depth(excess: Sequence[float], threshold: float, width: float) -> float:
    """Depth in [0, G] where the excess profile first rises above ``threshold``, smoothed.

    A hard "first group above the threshold" jumps by whole groups when one noisy group
    hovers at the threshold. Here each group ``k`` passes with probability
    ``p_k = logistic((threshold - excess_k) / width)`` and the depth is the expected number of
    groups passed before the first failure, ``sum_g prod_{k<=g} p_k``. It tends to the hard
    count as ``width -> 0``, is continuous in every excess value, and only falls when any
    excess rises: a profile that rises early gives a shallower depth.

    Args:
        excess: ``(G,)`` excess divergence per depth group, stem first.
        threshold: where a group stops counting as same-domain (``excess_threshold()``).
        width: softness, in the divergence's units (> 0).
    """
    if not width > 0:
        raise InvalidValueError(f"width must be > 0, but got {width!r}")
    depth, passed = 0.0, 1.0
    for value in excess:
        z = (threshold - float(value)) / width
        passed *= 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        depth += passed
    return depth


def quadrant_prior(
    log10_n: float,
    similarity: float,
    excess_profile: Sequence[float] | None,
    num_groups: int,
    *,
    num_classes: int,
    scale: float = BN_W2_SIMILARITY_SCALE,
    bounds: ProtocolSpace | None = None,
    transferability: float | None = None,
) -> Prior:
    """The continuous quadrant prior at ``(log10_n, similarity)`` for a ``G``-group backbone.

    Args:
        log10_n: log10 of the number of labelled target images.
        similarity: in [0, 1] (``similarity_from_excess``).
        excess_profile: ``(G,)`` excess divergence per depth group, or ``None`` (no profile:
            the un-scaled freeze depth is then ``similarity * G``).
        num_groups: ``G``.
        num_classes: ``C`` (the size threshold depends on it, see ``size_score``).
        scale: the divergence method's similarity scale; sets the freeze threshold
            ``excess_threshold(scale)``.
        bounds: outer ranges (default ``ProtocolSpace()``); the centre is clipped into them.
        transferability: in [0, 1] (``transferability_from_logme``) or ``None``; when given,
            the scalar rules read ``effective_similarity(similarity, transferability)``.
    """
    if num_groups < 1:
        raise InvalidValueError(f"num_groups must be >= 1, but got {num_groups!r}")
    if not 0.0 <= similarity <= 1.0:
        raise InvalidValueError(f"similarity must lie in [0, 1], but got {similarity!r}")
    if excess_profile is not None and len(excess_profile) != num_groups:
        raise InvalidValueError(
            f"excess_profile must have one value per depth group ({num_groups}), but got {len(excess_profile)} values"
        )
    bounds = bounds or ProtocolSpace()
    domain_s = float(similarity)
    # the scalar rules read the effective similarity: mostly LogME over chance, a tenth the
    # domain similarity (measurement, benchmarks/RESULTS.md "Estimator follow-ups (session 2)")
    s = effective_similarity(domain_s, transferability)
    d = 1.0 - s
    z = size_score(log10_n, num_classes)
    size = "large" if z >= 0.5 else "small"
    domain = "similar" if domain_s >= SIMILAR_THRESHOLD else "dissimilar"
    quadrant = f"{size}+{domain}"

    # ELR: log-linear in d between the survey's two lr classes (Li et al. ICLR 2020: the optimal
    # ELR rises as similarity falls).
    log10_elr = ELR_SIMILAR + (ELR_DISSIMILAR - ELR_SIMILAR) * d
    # Head: x10 when similar, x3.2 when far (measurement, docs/design.md; see HEAD_MULT_*).
    head = 10.0 ** (HEAD_MULT_SIMILAR + (HEAD_MULT_DISSIMILAR - HEAD_MULT_SIMILAR) * d)
    # Freeze: follow the excess profile to where it crosses the similarity split (survey:
    # transfer the layers whose features still fit), then scale down for large targets
    # (survey: large -> fine-tune everything) and for far ones (survey: dissimilar -> shallower).
    threshold = excess_threshold(scale)
    if excess_profile is None:
        depth = domain_s * num_groups
    else:
        depth = crossing_depth(excess_profile, threshold, CROSSING_SOFTNESS * scale)
    size_factor = 1.0 - z
    sim_factor = 0.5 + 0.5 * s
    freeze = (depth / num_groups) * size_factor * sim_factor
    # Re-init: more for far targets (survey, large+dissimilar row), fewer for small ones.
    reinit = REINIT_MAX * d * (REINIT_SMALL_SHARE + (1.0 - REINIT_SMALL_SHARE) * z)
    # Regularisation: up as N falls (survey); L2-SP also down as similarity falls (Li et al. 2020).
    weight_decay = 10.0 ** (WD_LARGE + WD_SMALL_EXTRA * (1.0 - z))
    l2sp = L2SP_MAX * s * (1.0 - z)
    # Layer-wise lr decay: protect early layers of small, similar targets (survey).
    layer_decay = 1.0 - (1.0 - LAYER_DECAY_MIN) * s * (1.0 - z)
    # BN: adapt the statistics of trainable groups to a far target (AdaBN, Li et al. 2016);
    # keep the source's running statistics for a similar one. A question of input statistics,
    # so the domain similarity decides, not the effective one.
    bn_mode = "frozen" if domain_s >= SIMILAR_THRESHOLD else "adapt"

    raw = Protocol(
        log10_elr=log10_elr,
        momentum=MOMENTUM,
        head_lr_mult=head,
        freeze_frac=min(max(freeze, 0.0), 1.0),
        reinit_frac=min(max(reinit, 0.0), 1.0),
        layer_decay=layer_decay,
        weight_decay=weight_decay,
        bn_mode=bn_mode,
        l2sp=l2sp,
    )
    centre = bounds.clip(raw)
    f, r = centre.integers(num_groups)
    schedule, stage_frac, schedule_line = schedule_rule(z, s, num_groups - r - f)
    centre = bounds.clip(replace(centre, schedule=schedule, stage_frac=stage_frac))
    space = exploring_space(centre, bounds)
    n = 10.0**log10_n
    rationale = [
        f"placement: N = {n:.0f} (size score {z:.2f}, {size}), similarity {domain_s:.2f} ({domain}) -> "
        f"{quadrant}: {DECISION_TABLE[quadrant]} (survey, arXiv 2205.09904)",
        (
            f"effective similarity {s:.2f} = {1 - TRANSFER_WEIGHT:.1f} x similarity {domain_s:.2f} + "
            f"{TRANSFER_WEIGHT:.1f} x transferability {float(transferability):.2f} (LogME over chance; "
            "measurement: transfer gains follow LogME, benchmarks/RESULTS.md) drives the scalar rules below"
            if transferability is not None
            else "no transferability measured: the scalar rules below read the similarity"
        ),
        f"log10 ELR {centre.log10_elr:.2f} (ELR {centre.elr:.3g}, lr {centre.lr:.3g} at momentum "
        f"{centre.momentum:.2f}): rises from {ELR_SIMILAR:.2f} (similar) to {ELR_DISSIMILAR:.2f} "
        "(dissimilar) (Li et al., ICLR 2020; survey lr classes 0.003 / 0.025)",
        f"search space: freeze depth 0 to {num_groups}, re-init 0 to all, log10 ELR"
        f" {space.ranges['log10_elr'].low:.1f} to {space.ranges['log10_elr'].high:.1f} (reaching ELR"
        f" {10**ELR_TOP:.3g}: the best short-budget lr sat at the top of a 0.001-0.03 grid), BN both ways;"
        " the prior centres the first sampled trials (one spread: log10 ELR"
        f" +-{WIDTHS['log10_elr']:g}, freeze +-{WIDTHS['freeze_frac']:g}, re-init +-{WIDTHS['reinit_frac']:g}) and"
        " does not fence the search in",
        f"head lr x{centre.head_lr_mult:.3g}: own lr for the zero-initialised head (measurement, docs/design.md), "
        "x10 when similar down to x3.2 when far",
        f"freeze_frac {centre.freeze_frac:.2f} (f = {f} of {num_groups}): "
        + (
            f"excess divergence first crosses {threshold:.3f} at depth {depth:.2f} of {num_groups} (smoothed)"
            if excess_profile is not None
            else f"no excess profile, depth = similarity x G = {depth:.2f}"
        )
        + f", x {size_factor:.2f} for size and x {sim_factor:.2f} for similarity "
        "(survey: small+similar -> feature extraction, large -> fine-tune everything)",
        f"reinit_frac {centre.reinit_frac:.2f} (r = {r} of {num_groups - f} trainable): "
        "grows with dissimilarity, less for small targets (survey: large+dissimilar -> more "
        "re-initialised groups)",
        f"weight decay {centre.weight_decay:.2g}, L2-SP {centre.l2sp:.3g}: regularise more as N falls "
        "(survey); L2-SP only towards a similar source (Li et al., ICLR 2020)",
        f"layer decay {centre.layer_decay:.2f}: slower early layers for small, similar targets (survey)",
        f"BN {centre.bn_mode}: "
        + ("adapt statistics to a far target (AdaBN)" if bn_mode == "adapt" else "keep source statistics")
        + "; momentum 0.9 (Li et al., ICLR 2020)",
        schedule_line,
    ]
    return Prior(
        centre=centre,
        space=space,
        quadrant=quadrant,
        rationale=rationale,
        num_groups=num_groups,
        kind="quadrant",
    )


def schedule_rule(size: float, similarity: float, pretrained: int) -> tuple[str, float, str]:
    """``(schedule, stage_frac, rationale line)`` for a target of size score ``size`` and
    (effective) ``similarity`` whose centre trains ``pretrained`` pretrained groups (``G - r - f``).

    One stage when nothing pretrained trains (every schedule is one-stage then) or the target is
    large (``SCHEDULE_LARGE``); else LP-FT when similar (``SCHEDULE_SIMILAR``), gradual unfreezing
    when not.
    """
    if pretrained <= 0:
        return "one-stage", LPFT_STAGE, "schedule one-stage: no pretrained group trains, so every schedule is one stage"
    if size >= SCHEDULE_LARGE:
        return (
            "one-stage",
            LPFT_STAGE,
            f"schedule one-stage: size score {size:.2f} >= {SCHEDULE_LARGE:g}, enough data to fine-tune every"
            " trainable group from the start (survey: large -> fine-tune everything)",
        )
    if similarity >= SCHEDULE_SIMILAR:
        return (
            "lp-ft",
            LPFT_STAGE,
            f"schedule lp-ft, head and re-initialised groups alone for the first {LPFT_STAGE:g} of the budget:"
            f" small (size score {size:.2f}) with good features (effective similarity {similarity:.2f}"
            f" >= {SCHEDULE_SIMILAR:g}, transferability included), which a zero head's"
            " early gradients would distort (Kumar et al., ICLR 2022)",
        )
    return (
        "gradual",
        GRADUAL_STAGE,
        f"schedule gradual, {pretrained} pretrained groups unfrozen top-down by {GRADUAL_STAGE:g} of the budget:"
        f" small (size score {size:.2f}) and far (effective similarity {similarity:.2f} < {SCHEDULE_SIMILAR:g},"
        " transferability included): adapt the top before the lower groups,"
        " against forgetting (ULMFiT, Howard & Ruder, ACL 2018)",
    )


def with_schedules(prior: Prior, schedules: Sequence[str]) -> Prior:
    """``prior`` searching only ``schedules`` (``StudySettings.schedules``): its space's schedules,
    and a centre or candidate whose schedule is not among them runs the first of them (one-stage
    when searched), with a rationale line when the centre changes."""
    allowed = tuple(schedules)
    centre = prior.centre.within_schedules(allowed)
    rationale = list(prior.rationale)
    if centre != prior.centre:
        rationale.append(
            f"schedule {centre.schedule}, not the rule's {prior.centre.schedule}: the study searches"
            f" {', '.join(allowed)} only (--schedules)"
        )
    return replace(
        prior,
        centre=centre,
        space=replace(prior.space, schedules=allowed),
        rationale=rationale,
        candidates=[(source, p.within_schedules(allowed)) for source, p in prior.candidates],
    )


# --- fixed protocols ---------------------------------------------------------------------------
# Enqueued by the search when a study is created (issue 4), as plain protocols of the
# vocabulary. The survey (arXiv 2205.09904) summarises fine-tuning practice in two lr classes
# (~0.003 for targets near the source, ~0.02-0.025 with more re-initialised layers for less
# similar ones); Li et al. (ICLR 2020) fix the standard fine-tuning setting at momentum 0.9,
# weight decay 1e-4. The new head keeps a x10 lr (the classic recipe for new layers, and
# docs/design.md's measurement on the zero-initialised head).

_FT_WEIGHT_DECAY = 1e-4


def recommended_protocol() -> Protocol:
    """The survey's recommended fine-tuning: lr 0.003 at momentum 0.9 (ELR 0.03), all groups
    trainable, nothing re-initialised, weight decay 1e-4 (Li et al., ICLR 2020 defaults)."""
    return Protocol(
        log10_elr=math.log10(0.03),
        momentum=0.9,
        head_lr_mult=10.0,
        freeze_frac=0.0,
        reinit_frac=0.0,
        layer_decay=1.0,
        weight_decay=_FT_WEIGHT_DECAY,
        bn_mode="adapt",
        l2sp=0.0,
    )


def less_similar_protocol(num_groups: int) -> Protocol:
    """The survey's protocol for less similar targets: lr 0.025 at momentum 0.9 (ELR 0.25), all
    groups trainable, the last 2 depth groups re-initialised (1 if ``G`` is 1)."""
    if num_groups < 1:
        raise InvalidValueError(f"num_groups must be >= 1, but got {num_groups!r}")
    return replace(
        recommended_protocol(),
        log10_elr=math.log10(0.25),
        reinit_frac=min(2, num_groups) / num_groups,
    )


def linear_probe_protocol() -> Protocol:
    """Feature extraction (survey, small+similar row): every group frozen (``freeze_frac = 1``),
    only the head trains, at head ELR 0.03 x 10 = 0.3."""
    return replace(recommended_protocol(), freeze_frac=1.0, bn_mode="frozen")


def scratch_protocols() -> list[Protocol]:
    """The from-scratch control (docs/design.md, "Controls"): every group re-initialised
    (``reinit_frac = 1``, nothing frozen), lr 0.1 at momentum 0.9 (ELR 1), the from-scratch
    ImageNet standard that Li et al. (ICLR 2020) contrast fine-tuning with; weight decay 1e-4;
    head at the same lr (it is no newer than the rest). One run, not the best of three rates
    (issue 27): it is a full training of a re-initialised network, and three of them cost a
    quarter of the default job while only saying whether pretraining helped at all."""
    return [
        Protocol(
            log10_elr=math.log10(lr / 0.1),
            momentum=0.9,
            head_lr_mult=1.0,
            freeze_frac=0.0,
            reinit_frac=1.0,
            layer_decay=1.0,
            weight_decay=_FT_WEIGHT_DECAY,
            bn_mode="adapt",
            l2sp=0.0,
        )
        for lr in (0.1,)
    ]


def probe_control_protocols() -> list[Protocol]:
    """The linear-probe control (docs/design.md: best of 2 ELRs): ``freeze_frac = 1``, backbone ELR
    0.01 and 0.1 with the head at x10 (head ELR 0.1 and 1), bracketing ``linear_probe_protocol``."""
    return [
        Protocol(
            log10_elr=log10_elr,
            momentum=0.9,
            head_lr_mult=10.0,
            freeze_frac=1.0,
            reinit_frac=0.0,
            layer_decay=1.0,
            weight_decay=_FT_WEIGHT_DECAY,
            bn_mode="frozen",
            l2sp=0.0,
        )
        for log10_elr in (-2.0, -1.0)
    ]
