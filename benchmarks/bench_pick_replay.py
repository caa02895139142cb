"""Replay rankings of a study's trials against their scores on unseen images (no training).

For every cell of the judged benchmark with a judge score for each completed transfer trial (rows
``e`` over h's study and ``x`` over s's, in ``judged.jsonl``), rank the trials by each candidate
rule, take the top ``PICK_TOP`` distinct protocols with the pick's own ``pick_candidates``, and report the mean judge
score of those members (and of the first alone), paired by cell against the final validation
score. It is the proxy that chose the settled score (``handback.pick.settled_score``); the ensemble's
own judge score under the chosen rule is method k / m of ``bench_judged.py``.

    python benchmarks/bench_pick_replay.py
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
STUDY_OF = {"e": "h", "x": "s"}


def curve(trial) -> list[float]:
    """The trial's validation scores in step order (its final score alone when none was kept)."""
    from autotransfer.core.schema import HISTORY_ATTR

    return [float(v) for _, v in trial.user_attrs.get(HISTORY_ATTR) or []] or [float(trial.value)]


RULES: dict[str, Callable] = {
    "final score": lambda t: float(t.value),
    "mean of the last 2": lambda t: statistics.mean(curve(t)[-2:]),
    "mean of the last 3": lambda t: statistics.mean(curve(t)[-3:]),
    "second half of the curve": lambda t: statistics.mean(curve(t)[len(curve(t)) // 2 :]),
    "final minus spread of the last 3": lambda t: float(t.value) - statistics.pstdev(curve(t)[-3:]),
}


def main() -> None:
    import optuna

    from autotransfer.handback.pick import PICK_TOP, pick_candidates

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = [json.loads(line) for line in (HERE / "judged.jsonl").read_text().splitlines() if line.strip()]
    scored = [r for r in rows if r["method"] in STUDY_OF and r.get("per_trial")]
    results: dict[str, dict[str, list[float]]] = {name: {"first": [], "members": []} for name in RULES}
    for row in scored:
        target, n, seed = row["cell"].split(":")
        url = f"sqlite:///{HERE / 'out' / f'judged-{target}-{n}-{seed}.db'}"
        study = optuna.load_study(study_name=STUDY_OF[row["method"]], storage=url)
        judged = {int(k): v for k, v in row["per_trial"].items()}
        for name, key in RULES.items():
            chosen = [t.number for t in pick_candidates(study, PICK_TOP, score=key)]
            results[name]["first"].append(judged[chosen[0]])
            results[name]["members"].append(statistics.mean(judged[m] for m in chosen))
    print(f"{len(scored)} studies (rows {', '.join(sorted({r['method'] for r in scored}))})", file=sys.stderr)
    print("| ranking | members' mean, minus final score's (points) | first member, the same | better / worse |")
    print("|---|---|---|---|")
    base = results["final score"]
    for name, got in results.items():
        cells = []
        for part in ("members", "first"):
            diff = [100 * (a - b) for a, b in zip(got[part], base[part])]
            half = 1.96 * statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
            cells.append(f"{statistics.mean(diff):+.2f} (±{half:.2f})")
        diff = [a - b for a, b in zip(got["members"], base["members"])]
        wins, losses = sum(d > 1e-9 for d in diff), sum(d < -1e-9 for d in diff)
        print(f"| {name} | {cells[0]} | {cells[1]} | {wins} / {losses} |")


if __name__ == "__main__":
    main()
