"""Leave-one-target-out: trials to come within 1 point of the best, for the surface prior (fitted
on the other targets), the quadrant prior and no prior (issue 5).

It reads a finished sweep (``studies/sweep-lab.yaml``: its surface store and its study storage).
For each target and seed at one size:

- ``quadrant``: the sweep's own study (run with the quadrant prior); with ``--quadrant-from rerun``,
  a new search-only study with that study's prior, under the current search rules;
- ``surface``: a new search-only study centred on the surface fitted to every point of the store
  except this target's (``prior_at_coordinates(exclude_targets=...)``), enqueuing what ``tune``
  enqueues with that prior (its centre, the optima of the nearest recorded studies, the survey's
  protocols, a linear probe);
- ``none``: a new search-only study over the wide ranges, nothing enqueued.

All three share the study settings (data subsample, splits, budget in steps, sampler seed,
pruner). Controls are not part of the count. The reference is the best validation score any of
the three reached on that (target, seed) (``--reference sweep``: the final best of the sweep's
study of that target, the issue's wording); a run that never comes within 1 point of it counts as
``trials + 1`` (censored, reported); the mean gap between the reference and the best-so-far after
k trials is reported too. Results are appended to a JSON-lines file as each study ends,
so the benchmark resumes.

    OMP_NUM_THREADS=1 python benchmarks/bench_surface_loto.py --size 300 --seeds 0,1
    python benchmarks/bench_surface_loto.py --summary --results benchmarks/out/surface-loto-100.jsonl,benchmarks/out/surface-loto-300.jsonl
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "out"
PRIORS = ("surface", "quadrant", "none")


def run_prior(
    target: str, seed: int, prior_kind: str, spec, size: int, storage: str, *, quadrant_from: str = "sweep"
) -> dict | None:
    """One search-only study (or, for ``quadrant`` with ``quadrant_from="sweep"``, the sweep's study)
    and its search-trial values; None when the sweep has not finished that study yet."""
    from dataclasses import replace

    from autotransfer.backbones import create_backbone
    from autotransfer.estimate.profile import TaskProfile
    from autotransfer.pipeline.search_only import run_search_study, search_values
    from autotransfer.prior import Prior
    from autotransfer.search.prepared import prepare_data
    from autotransfer.search.run import default_study_name
    from autotransfer.search.storage import open_storage, storage_location
    from autotransfer.search.study import load_study, read_attr, read_settings, study_exists
    from autotransfer.surface import POINT_ATTR, prior_for_task

    base = replace(spec.base_settings(), target=target, n=size, seed=seed)
    sweep_storage = storage_location(spec.storage)
    store = open_storage(sweep_storage)
    name = default_study_name(base)
    if not study_exists(store, name) or POINT_ATTR not in load_study(name, store).user_attrs:
        return None  # the sweep has not finished this study yet
    sweep_study = load_study(name, store)
    settings = read_settings(sweep_study)  # the exact settings of the sweep's study (budget, metric...)
    record = {"target": target, "seed": seed, "size": size, "prior": prior_kind}
    if prior_kind == "quadrant" and quadrant_from == "sweep":
        record.update(study=sweep_study.study_name, values=search_values(sweep_study)[: spec.trials])
        return record
    prepared = prepare_data(settings)
    backbone = create_backbone(settings.model, num_classes=settings.num_classes)
    prior = None
    if prior_kind == "quadrant":  # the sweep study's own prior, run again under the current search rules
        prior = Prior.from_dict(read_attr(sweep_study, "prior"))
    if prior_kind == "surface":
        profile = TaskProfile.from_dict(read_attr(sweep_study, "profile"))
        prior = prior_for_task(spec.store, profile, exclude_targets=[target])
        record["prior_centre"] = prior.centre.to_dict()
        record["prior_rationale"] = prior.rationale[0]  # says whether the residual (quadrant + GP) fit was used
        record["prior_candidates"] = [source for source, _ in prior.candidates]  # enqueued after the centre
    name = f"loto-{prior_kind}-{sweep_study.study_name}"
    study = run_search_study(name, storage, settings, prepared, backbone, prior=prior, trials=spec.trials)
    record.update(study=name, values=search_values(study)[: spec.trials])
    return record


def reference_value(by: dict[str, list], reference: str) -> float:
    """The score a (target, seed)'s runs are measured against: ``common``, the best any prior
    reached; ``sweep``, the final best of the quadrant run (the sweep's own study of that target,
    or its rerun when the records come from ``--quadrant-from rerun``)."""
    runs = by.values() if reference == "common" else [by["quadrant"]]
    return max(v for vals in runs for v in vals if v is not None)


def summary(results: list[dict], trials: int, tolerance: float = 0.01, reference: str = "common") -> str:
    """Per (size, target, seed): trials to within ``tolerance`` for each prior; then, over all
    complete runs, the mean trials to within 1, 3 and 5 points with their ratios to no prior, and
    the mean gap to the reference after k trials."""
    from autotransfer.pipeline.search_only import trials_to_within

    groups: dict[tuple[int, str, int], dict[str, list]] = {}
    for r in results:
        groups.setdefault((r["size"], r["target"], r["seed"]), {})[r["prior"]] = r["values"]
    complete = {key: by for key, by in sorted(groups.items()) if set(by) == set(PRIORS)}
    refs = {key: reference_value(by, reference) for key, by in complete.items()}

    def count(values: list, ref: float, tol: float) -> int:
        k = trials_to_within(values, ref, tol)
        return trials + 1 if k is None else k  # censored

    rows = [
        "| N | target | seed | best val | " + " | ".join(f"{p}: trials (best)" for p in PRIORS) + " |",
        "|---|---|---|---|" + "---|" * len(PRIORS),
    ]
    for (size, target, seed), by in complete.items():
        ref = refs[(size, target, seed)]
        cells = []
        for p in PRIORS:
            k = count(by[p], ref, tolerance)
            best = max((v for v in by[p] if v is not None), default=float("nan"))
            cells.append(f"{k if k <= trials else f'>{trials}'} ({best:.3f})")
        rows.append(f"| {size} | {target} | {seed} | {ref:.3f} | " + " | ".join(cells) + " |")
    if not complete:
        return "\n".join(rows)
    tols = (0.01, 0.03, 0.05)
    rows += [
        "",
        f"{len(complete)} runs; mean trials to within t points (runs censored at {trials + 1}), ratio to no prior:",
        "",
        "| prior | " + " | ".join(f"within {t * 100:g} | ratio" for t in tols) + " |",
        "|---|" + "---|---|" * len(tols),
    ]
    counts = {t: {p: [count(by[p], refs[key], t) for key, by in complete.items()] for p in PRIORS} for t in tols}
    for p in PRIORS:
        cells = []
        for t in tols:
            m = sum(counts[t][p]) / len(counts[t][p])
            n_censored = sum(k > trials for k in counts[t][p])
            cells.append(f"{m:.1f} ({n_censored}) | {m / (sum(counts[t]['none']) / len(counts[t]['none'])):.2f}")
        rows.append(f"| {p} | " + " | ".join(cells) + " |")
    # a less all-or-nothing view: how far below the reference the best-so-far is after k trials
    ks = [k for k in (1, 3, 5, 10, 20) if k <= trials]
    rows += ["", "| prior | " + " | ".join(f"gap after {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for p in PRIORS:
        gaps = {k: [] for k in ks}
        for key, by in complete.items():
            ref = refs[key]
            for k in ks:
                seen = [v for v in by[p][:k] if v is not None]
                gaps[k].append(ref - max(seen) if seen else ref)  # nothing completed yet: the whole reference
        rows.append(f"| {p} | " + " | ".join(f"{sum(g) / len(g):.3f}" for g in gaps.values()) + " |")
    rows += ["", enqueued_table(results, refs)]
    return "\n".join(rows)


def enqueued_table(results: list[dict], refs: dict[tuple[int, str, int], float]) -> str:
    """For the surface runs that record their candidates: how often each enqueued trial (the
    centre, the nearest studies' optima, the survey's protocols, the linear probe) came within 1
    and 3 points of the reference (``refs``: per complete (size, target, seed)), and its mean gap to it."""
    runs = [
        r
        for r in results
        if r["prior"] == "surface" and "prior_candidates" in r and (r["size"], r["target"], r["seed"]) in refs
    ]
    if not runs:
        return ""
    k = len(runs[0]["prior_candidates"])
    names = [
        "surface centre",
        *(f"nearest study {i + 1}" for i in range(k)),
        "survey: recommended",
        "survey: less similar",
        "linear probe",
    ]
    rows = [
        f"Enqueued trials of the {len(runs)} surface runs, in the order they ran:",
        "",
        "| trial | protocol | within 1 point | within 3 points | pruned or failed | mean gap when completed |",
        "|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(names):
        gaps, stopped = [], 0
        for r in runs:
            ref = refs[(r["size"], r["target"], r["seed"])]
            v = r["values"][i] if i < len(r["values"]) else None
            if v is None:
                stopped += 1
            else:
                gaps.append(ref - v)
        mean_gap = f"{sum(gaps) / len(gaps):.3f}" if gaps else "-"
        rows.append(
            f"| {i + 1} | {name} | {sum(g <= 0.01 + 1e-9 for g in gaps)}/{len(runs)} |"
            f" {sum(g <= 0.03 + 1e-9 for g in gaps)}/{len(runs)} | {stopped}/{len(runs)} | {mean_gap} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "studies" / "sweep-lab.yaml"))
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--targets", default=None, help="comma-separated; default: every target of the spec")
    parser.add_argument("--priors", default=",".join(PRIORS))
    parser.add_argument("--results", default=str(OUT / "surface-loto.jsonl"))
    parser.add_argument(
        "--summary",
        action="store_true",
        help="only print the tables of recorded results (--results may then list several files, comma-separated)",
    )
    parser.add_argument("--tolerance", type=float, default=0.01, help="'within' this much of the best (0.01 = 1 point)")
    parser.add_argument(
        "--quadrant-from",
        choices=("sweep", "rerun"),
        default="sweep",
        help="sweep: the quadrant runs are the sweep's own studies; rerun: a new study with the "
        "sweep study's prior (after a change to how studies search)",
    )
    parser.add_argument(
        "--reference",
        choices=("common", "sweep"),
        default="common",
        help="common: the best any prior reached; sweep: the final best of the quadrant run "
        "(the target's sweep study, or its rerun with --quadrant-from rerun)",
    )
    args = parser.parse_args()

    import torch

    from autotransfer.pipeline.search_only import ResultLog
    from autotransfer.pipeline.sweep import load_sweep_spec

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # paths as given, resolved before the chdir to the repository (the spec's storage and store are relative to it)
    spec_path = Path(args.spec).resolve()
    results_paths = [Path(path).resolve() for path in args.results.split(",")]
    os.chdir(ROOT)
    spec = load_sweep_spec(spec_path)
    if args.summary:  # any number of result files, e.g. one per size
        records = [r for path in results_paths for r in ResultLog(path).records]
        print(summary(records, spec.trials, args.tolerance, args.reference))
        return
    if len(results_paths) != 1:
        parser.error("--results takes one file when running (several only with --summary)")
    log = ResultLog(results_paths[0])
    storage = log.storage
    have = log.keys("target", "seed", "prior")
    targets = args.targets.split(",") if args.targets else spec.targets
    for seed in (int(s) for s in args.seeds.split(",")):
        for target in targets:
            for prior_kind in args.priors.split(","):
                if (target, seed, prior_kind) in have:
                    continue
                record = run_prior(target, seed, prior_kind, spec, args.size, storage, quadrant_from=args.quadrant_from)
                if record is None:
                    print(f"{target} seed {seed}: the sweep's study is not finished yet; skipped", flush=True)
                    continue
                log.append(record)
                print(
                    f"{target} seed {seed} {prior_kind}: best {max((v for v in record['values'] if v is not None), default=float('nan')):.3f}",
                    flush=True,
                )
    print(summary(log.records, spec.trials, args.tolerance, args.reference))


if __name__ == "__main__":
    main()
