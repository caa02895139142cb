"""Rich tables for a ``TaskProfile``: size, divergence by depth, similarity, placement, prior."""

from __future__ import annotations

import math

from rich.table import Table

from autotransfer.core.protocol import freeze_depth, reinit_count, schedule_words
from autotransfer.estimate.profile import TaskProfile
from autotransfer.prior.quadrant import Prior

__all__ = ["profile_tables", "prior_table"]


def profile_tables(profile: TaskProfile) -> list[Table]:
    """The tables ``autotransfer estimate`` prints, in order; sections that are ``None`` are left out."""
    tables = [_size_table(profile)]
    if profile.divergence is not None:
        tables.append(_divergence_table(profile))
        if profile.divergence.source is not None:
            tables.append(_source_table(profile))
    tables.append(_scores_table(profile))
    if profile.placement is not None:
        tables.append(_placement_table(profile))
    if profile.prior is not None:
        tables.append(prior_table(profile.prior))
    if profile.timings:
        tables.append(_timings_table(profile))
    return tables


def _num(value: float | None, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def _kv(title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    return table


def _size_table(profile: TaskProfile) -> Table:
    s = profile.size
    table = _kv(f"Target {profile.spec}  (model {profile.model}, G = {profile.num_groups})")
    table.add_row("images", f"{s.images:,}")
    table.add_row("classes", str(s.classes))
    table.add_row(
        "per class min / median / max",
        f"{s.per_class_min} ({s.smallest_class}) / {s.per_class_median:g} / {s.per_class_max} ({s.largest_class})",
    )
    table.add_row("imbalance (max/min)", f"{s.imbalance:.2f}")
    table.add_row("height min / median / max", f"{s.height[0]} / {s.height[1]:g} / {s.height[2]}")
    table.add_row("width min / median / max", f"{s.width[0]} / {s.width[1]:g} / {s.width[2]}")
    table.add_row("channels (content)", "1 (greyscale)" if s.channels == 1 else str(s.channels))
    table.add_row("metric", s.metric)
    table.add_row("fingerprint", profile.fingerprint[:16])
    for note in profile.notes:
        table.add_row("note", note)
    return table


def _divergence_table(profile: TaskProfile) -> Table:
    div = profile.divergence
    assert div is not None
    table = Table(title=f"Divergence by depth ({div.method})", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("group")
    table.add_column("raw", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("excess", justify="right")
    for i, name in enumerate(div.groups):
        ref = None if div.reference is None else div.reference[i]
        table.add_row(str(i), name, _num(div.raw[i], ".4f"), _num(ref, ".4f"), _num(div.excess[i], ".4f"))
    return table


def _source_table(profile: TaskProfile) -> Table:
    src = profile.divergence.source if profile.divergence else None
    assert src is not None
    table = _kv(f"Against the source sample (n = {src.n_target} target, {src.n_source} source)")
    table.add_row("MMD^2 (last group)", f"{_num(src.mmd, '.4g')}  (p = {_num(src.mmd_p, '.3f')})")
    table.add_row("Sinkhorn divergence", _num(src.sinkhorn, ".4g"))
    table.add_row("EMD, debiased", _num(src.emd, ".4g"))
    table.add_row("sliced Wasserstein", _num(src.sliced, ".4g"))
    table.add_row("CORAL", _num(src.coral, ".4g"))
    return table


def _scores_table(profile: TaskProfile) -> Table:
    table = _kv("Similarity and transferability")
    table.add_row("similarity (0-1)", f"{profile.similarity:.3f}")
    tr = profile.transferability
    if tr is not None:
        table.add_row("LogME", _num(tr.logme, ".4f"))
        table.add_row("LEEP", _num(tr.leep, ".4f"))
        table.add_row("NLEEP", f"{_num(tr.nleep, '.4f')}  (n = {tr.n_ref})")
        table.add_row("H-score", _num(tr.hscore, ".4f"))
        table.add_row("LogME over chance", f"{_num(tr.logme_over_chance, '.4f')}  (n = {tr.n_ref})")
    if profile.transferability_score is not None:
        table.add_row("transferability (0-1)", f"{profile.transferability_score:.3f}")
    return table


def _placement_table(profile: TaskProfile) -> Table:
    p = profile.placement
    assert p is not None
    table = _kv("Placement (Plested & Gedeon, arXiv 2205.09904)")
    table.add_row("log10 N", f"{p.log10_n:.3f}")
    table.add_row("images per class", f"{p.images_per_class:.1f}")
    table.add_row("size score", f"{p.size_score:.3f}  ({p.size}; large from N = {p.large_at:,})")
    table.add_row("similarity", f"{p.similarity:.3f}  ({p.domain})")
    table.add_row("quadrant", p.quadrant)
    table.add_row("protocol family", p.protocol)
    return table


def prior_table(prior: Prior) -> Table:
    """A prior's centre, ranges and integers, its rationale as the caption (candidates included)."""
    g = prior.num_groups
    centre = prior.centre
    f, r = prior.integers()
    table = Table(title=f"Prior ({prior.kind}, {prior.quadrant})", title_justify="left")
    table.add_column("parameter")
    table.add_column("centre", justify="right")
    table.add_column("range", justify="right")
    table.add_column(f"integers (G = {g})")
    for name, rng in prior.space.ranges.items():
        if name not in prior.space.suggested():
            continue  # stage_frac of a one-stage-only study: no stage to size
        value = float(getattr(centre, name))
        span = f"[{rng.low:.3g}, {rng.high:.3g}]" + (" log" if rng.log else "")
        ints = ""
        if name == "freeze_frac":
            ints = f"f = {f}  (range {freeze_depth(rng.low, g)}..{freeze_depth(rng.high, g)})"
        elif name == "reinit_frac":
            ints = f"r = {r}  (range {reinit_count(rng.low, g, f)}..{reinit_count(rng.high, g, f)} at f = {f})"
        elif name == "log10_elr":
            ints = f"ELR {centre.elr:.3g}, lr {centre.lr:.3g}"
        table.add_row(name, f"{value:.3g}", span, ints)
    table.add_row("bn_mode", centre.bn_mode, ", ".join(prior.space.bn_modes), "")
    table.add_row("schedule", schedule_words(centre), ", ".join(prior.space.schedules), "")
    if prior.rationale:
        table.caption = "\n".join(f"- {line}" for line in prior.rationale)
        table.caption_justify = "left"
    return table


def _timings_table(profile: TaskProfile) -> Table:
    table = _kv("Timings (s)")
    for stage, seconds in profile.timings.items():
        table.add_row(stage, f"{seconds:.2f}")
    return table
