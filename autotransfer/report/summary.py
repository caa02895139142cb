"""The end-of-tune summary as a rich table (numbers come from ``TuneResult``)."""

from __future__ import annotations

from rich.table import Table

from autotransfer.core.protocol import schedule_words
from autotransfer.report.model_choice import MODEL_CHOICE_HEADERS, model_choice_table
from autotransfer.search.storage import masked_url
from autotransfer.train.metrics import score_interval

__all__ = ["summary_table", "skipped_text", "ledger_rows", "model_choice_rows"]


def _fmt(value: float | None, n: int | None = None) -> str:
    """A score, with its 95% Wilson interval when the number of images ``n`` behind it is known."""
    if value is None:
        return "—"
    if not n:
        return f"{value:.4f}"
    low, high = score_interval(value, n)
    return f"{value:.4f} ({n} images; 95% interval {low:.2f}–{high:.2f})"


def skipped_text(skipped: dict | None) -> str | None:
    """``"6 (a/empty.png, a/text.png, ...): 6 unreadable"`` from a ``skipped_summary`` dict, or
    ``None`` when nothing was skipped."""
    if not skipped or not skipped.get("count"):
        return None
    first = list(skipped.get("first") or [])
    names = ", ".join(first[:3]) + (", ..." if skipped["count"] > 3 else "")
    reasons = ", ".join(f"{n} {reason}" for reason, n in (skipped.get("reasons") or {}).items())
    return f"{skipped['count']} ({names})" + (f": {reasons}" if reasons else "")


def summary_table(result) -> Table:
    """Best protocol, its validation and test scores, controls, negative transfer, where things are."""
    metric = result.settings.metric or "score"
    table = Table(title=f"autotransfer: study {result.study_name}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in model_choice_rows(getattr(result, "model_choice", None)):
        table.add_row(what, value)
    if result.best_protocol is None:
        table.add_row("best protocol", "none completed")
    else:
        p = result.best_protocol
        f, r = result.integers or (None, None)
        table.add_row("best protocol", f"trial {result.best_trial}")
        table.add_row("  ELR / lr", f"{p.elr:.4g} / {p.lr:.4g} (momentum {p.momentum:.2f})")
        table.add_row("  freeze / reinit", f"f={f} (frac {p.freeze_frac:.2f}), r={r} (frac {p.reinit_frac:.2f})")
        table.add_row("  head lr ×, layer decay", f"{p.head_lr_mult:.3g}, {p.layer_decay:.3g}")
        table.add_row("  weight decay, L2-SP, BN", f"{p.weight_decay:.2g}, {p.l2sp:.3g}, {p.bn_mode}")
        table.add_row("  schedule", schedule_words(p))
    table.add_row(f"validation {metric}", _fmt(result.val_score, result.val_images))
    trained_on = getattr(result, "trained_on", None) or "train+val"
    table.add_row(f"test {metric} (trained on {trained_on})", _fmt(result.test_score, result.test_images))
    table.add_row("control: from scratch", _fmt(result.controls.get("scratch")))
    table.add_row("control: linear probe (best of 2)", _fmt(result.controls.get("probe")))
    table.add_row(
        "negative transfer",
        "[red]YES: from scratch beats every transfer protocol[/red]" if result.negative_transfer else "no",
    )
    skipped = skipped_text((result.profile or {}).get("skipped"))
    if skipped:
        table.add_row("[yellow]skipped files[/yellow]", skipped)
    table.add_row("search trials", str(result.n_search_trials))
    table.add_row("study", f"{result.study_name} in {masked_url(result.storage)}")
    table.add_row("exported config", str(result.export_path or "—"))
    table.add_row("fine-tuned model", str(result.model_path or "—"))
    for note in result.notes:
        table.add_row("note", note)
    for what, value in ledger_rows(getattr(result, "ledger", None)):
        table.add_row(what, value)
    return table


def model_choice_rows(choice: dict | None) -> list[tuple[str, str]]:
    """The chosen model and one row per candidate of a ``--models`` job
    (``report.model_choice.model_choice_table``)."""
    if not choice:
        return []
    rows = [("model", f"{choice['chosen']} ({choice['reason']})")]
    for row in model_choice_table(choice):
        cells = dict(zip(MODEL_CHOICE_HEADERS, row))
        what = f"  {cells['rank']}. {cells['model']}"
        race = (
            f"race {cells['race: best settled val']} val, {cells['race trials']} trial(s), {cells['race s']} s"
            if cells["race trials"] != "—"
            else ""
        )
        evidence = (
            f"NLEEP {cells['NLEEP']}, similarity {cells['similarity']}, {cells['train img/s']} img/s,"
            f" forecast {cells['forecast (80%)']}"
        )
        rows.append((what, "; ".join(part for part in (evidence, race, cells["outcome"]) if part)))
    return rows


def ledger_rows(ledger: dict | None) -> list[tuple[str, str]]:
    """The compute ledger's rows: seconds per stage, and as multiples of one full training."""
    if not ledger or not ledger.get("stages"):
        return []
    unit = ledger.get("training_s")
    in_t = ledger.get("in_trainings") or {}

    def cell(seconds: float, key: str) -> str:
        return f"{seconds:.0f} s" + (f" ({in_t[key]:.2f} trainings)" if key in in_t else "")

    rows = [("compute ledger", f"one full training at this size: {unit:.1f} s" if unit else "—")]
    rows += [(f"  {stage}", cell(float(seconds), stage)) for stage, seconds in ledger["stages"].items()]
    rows.append(("  total", cell(float(ledger.get("total_s", 0.0)), "total")))
    return rows
