"""Build the data-requirement curve's correction ``autotransfer/assets/data-curve-prior.json``
(issue 30; ``autotransfer.handback.data_curve``).

The correction is what past studies say about how the hand-back's error falls with labelled
images: per target, the weighted least-squares exponent ``b`` of ``log e`` on ``log N`` over the
studies of that target at several sizes, then their mean and spread over targets. Evidence:

- ``benchmarks/judged.jsonl``, method ``k`` (tune's hand-back, re-picked by the settled score;
  ``benchmarks/bench_judged.py``): judged on 1,000 unseen images, N = 200 (seeds 0-2) and
  N = 1000 (seeds 0, 1 where run) of elpv, animals, mnist5k;
- ``benchmarks/surface-imagenet.json``: studies of 5 targets at N = 100, 300, 1000 (``test_score``
  on their own test splits, 15% of N: noisy, so the weights give them little say).

The file keeps every evidence row, so a leave-one-target-out prior can be recomputed from it
(``load_prior(exclude=...)``, what ``benchmarks/bench_data_curve.py`` does).

    python benchmarks/build_data_curve_prior.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from autotransfer.handback.data_curve import PRIOR_ASSET, exponent_prior

HERE = Path(__file__).parent
ASSET = HERE.parent / "autotransfer" / "assets" / PRIOR_ASSET


def judged_rows(path: Path = HERE / "judged.jsonl") -> list[dict]:
    """Method k's judged scores: ``{"target", "n", "score", "scored_on", "source"}`` per cell."""
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("method") != "k" or r.get("judge") is None:
            continue
        target, n, seed = r["cell"].split(":")
        rows.append(
            {
                "target": f"builtin:{target}",
                "n": int(n),
                "score": round(float(r["judge"]), 4),
                "scored_on": int(r.get("judge_images") or 1000),
                "source": f"judged.jsonl k {r['cell']}",
            }
        )
    return rows


def surface_rows(path: Path = HERE / "surface-imagenet.json") -> list[dict]:
    """The surface studies' test scores on their own test splits (15% of N)."""
    rows = []
    for p in json.loads(path.read_text())["points"]:
        if p.get("test_score") is None:
            continue
        rows.append(
            {
                "target": p["target"],
                "n": int(p["n"]),
                "score": round(float(p["test_score"]), 4),
                "scored_on": max(1, round(0.15 * int(p["n"]))),
                "source": f"surface-imagenet.json {p['study']}",
            }
        )
    return rows


def main() -> None:
    evidence = judged_rows() + surface_rows()
    prior = exponent_prior(evidence)
    payload = {
        "what": "the exponent b of error ~ N^-b of tune's hand-back over past targets (issue 30)",
        "built_by": "benchmarks/build_data_curve_prior.py",
        "built": time.strftime("%Y-%m-%d"),
        "prior": {"exponent": round(prior.exponent, 4), "sd": round(prior.sd, 4), "tasks": list(prior.tasks)},
        "evidence": evidence,
    }
    ASSET.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {ASSET}: exponent {prior.exponent:.3f} +- {prior.sd:.3f} over {len(prior.tasks)} targets")


if __name__ == "__main__":
    main()
