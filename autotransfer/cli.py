"""The ``autotransfer`` command line: thin typer commands that call the library and print.

Over 400 lines: one typer command per subcommand, each with its options, help text and examples;
each only parses, calls one library function and prints (docs/design.md, "Layers").
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autotransfer.core.errors import UserError

__all__ = ["app", "main"]


class _App(typer.Typer):
    """The typer app, run as the console script (``main = app``). Typer's standalone mode prints
    usage errors (unknown option, missing argument, bad value) and exits 2; the package's own
    ``UserError`` gets the same treatment here: one line on stderr, exit 2, no traceback, and so
    does a full disk (``core.diskspace``: the path, the space free). Ctrl-C and SIGTERM stop with
    exit 130, keeping every recorded trial."""

    def __call__(self, *args, **kwargs):
        from rich.markup import escape

        from autotransfer.core.diskspace import disk_full_cause, disk_full_error

        try:
            return super().__call__(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Exception as err:
            if disk_full_cause(err) is None:
                raise
            err_console.print(f"[red]error:[/red] {escape(str(disk_full_error(err)))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            err_console.print("interrupted: everything already recorded is kept.")
            sys.exit(130)
        except SystemExit as done:
            if done.code == 130:
                err_console.print("interrupted: everything already recorded is kept.")
            raise


app = _App(
    help=(
        "Automated transfer-learning protocol search for image classification.\n\n"
        "Measures how big a target dataset is and how far it lies from a pretrained model's source,"
        " derives a prior fine-tuning protocol, searches around it with Optuna on real trials,"
        " and exports the best protocol and a fine-tuned model.\n\n"
        "The model runs outside autotransfer too: `export-model DIR --format onnx -o model.onnx` writes one"
        " ONNX graph (an ensemble averaged inside it), which predict and evaluate also take."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: Piped output keeps the tables' full width (rich would otherwise cut them to 80 columns);
#: COLUMNS, when set, still decides.
_WIDE = 4000


def _make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    return Console(stderr=stderr, width=_WIDE if piped and not os.environ.get("COLUMNS") else None)


console = _make_console()
err_console = _make_console(stderr=True)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class PredictFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _version(value: bool) -> None:
    if value:
        from autotransfer.core.version import __version__

        typer.echo(f"autotransfer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Automated transfer-learning protocol search for image classification."""
    import signal
    import threading

    import optuna

    # OpenMP's default busy-wait policy makes multi-threaded torch crawl on shared CPUs (measured
    # here: a 2-thread trial 34-37 s vs 5-6 s with PASSIVE); set before any command loads torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SIGTERM stops like Ctrl-C: Optuna marks the running trial FAIL, completed trials stay.
    # (Only the main thread may set a handler: an app run in-process from another thread keeps its own.)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


#: The ``--out`` of the commands that read a study: where ``tune --out`` wrote it.
_OUT_HELP = (
    "the folder `tune --out` wrote into (or a model folder under its runs/): read the study's storage from there"
    " (as tune chose it: $AUTOTRANSFER_STORAGE, else OUT/autotransfer.db)"
)
_READ_STORAGE_HELP = (
    "Optuna storage URL, file, or the folder tune wrote (default: --out's, else $AUTOTRANSFER_STORAGE, else"
    " sqlite:///studies/autotransfer.db); never created"
)


def _print_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


@app.command("datasets")
def datasets_cmd(
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """List the built-in datasets and whether each is installed.

    Example: autotransfer datasets --format json
    """
    from autotransfer.data import list_builtins

    infos = list_builtins()
    if fmt is OutputFormat.json:
        _print_json([info._asdict() if hasattr(info, "_asdict") else vars(info) for info in infos])
        return
    table = Table(title="built-in datasets (spec: builtin:NAME[?classes=0-4])")
    for col in ("name", "installed", "images", "classes", "size", "package / install", "licence"):
        table.add_column(col)
    for info in infos:
        table.add_row(
            info.name,
            "yes" if info.installed else "[red]no[/red]",
            str(info.num_images),
            str(info.num_classes),
            str(info.image_size),
            info.install_hint,
            info.licence,
        )
    console.print(table)


@app.command("models")
def models_cmd(
    name: Optional[str] = typer.Argument(None, help="a model spec, e.g. efficientnet_lite0, timm:resnet18"),
    groups: bool = typer.Option(False, "--groups", help="show the depth groups with parameter counts"),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """List the known backbones, or show one backbone's depth groups.

    Examples: autotransfer models;  autotransfer models efficientnet_lite0 --groups
    """
    from autotransfer.backbones import create_backbone, describe_groups, list_models

    if name is None:
        infos = list_models()
        if fmt is OutputFormat.json:
            _print_json([vars(i) if not hasattr(i, "_asdict") else i._asdict() for i in infos])
            return
        table = Table(title="known backbones (any timm:NAME, tv:NAME or checkpoint path also works)")
        keys = list(vars(infos[0]).keys() if not hasattr(infos[0], "_asdict") else infos[0]._asdict())
        for key in keys:
            table.add_column(key)
        for info in infos:
            row = vars(info) if not hasattr(info, "_asdict") else info._asdict()
            table.add_row(*[str(row[k]) for k in keys])
        console.print(table)
        return
    backbone = create_backbone(name, num_classes=2, pretrained=True)
    rows = describe_groups(backbone)
    if fmt is OutputFormat.json:
        _print_json(
            {
                "spec": name,
                "adapter": backbone.adapter,
                "num_groups": backbone.num_groups,
                "preprocessing": vars(backbone.preprocessing),
                "groups": [{"name": n, "params": p} for n, p in rows],
            }
        )
        return
    pre = backbone.preprocessing
    console.print(
        f"[bold]{name}[/bold]: G = {backbone.num_groups} depth groups ({backbone.adapter}),"
        f" input {pre.input_size}px {pre.interpolation}, mean {pre.mean}, std {pre.std}"
    )
    if groups or fmt is OutputFormat.table:
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("group")
        table.add_column("parameters", justify="right")
        for i, (group_name, count) in enumerate(rows):
            table.add_row(str(i), group_name, f"{count:,}")
        console.print(table)


@app.command("estimate")
def estimate_cmd(
    target: str = typer.Argument(..., help="dataset spec: builtin:NAME[?classes=..], folder:PATH or a path"),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="model spec (default efficientnet_lite0); auto scores every model with offline weights, like --models auto",
    ),
    models: Optional[str] = typer.Option(
        None,
        "--models",
        help="score several models, comma-separated (auto: the offline zoo): transferability, divergence, training speed",
    ),
    source: Optional[str] = typer.Option(None, "--source", help="a source-domain sample (any dataset spec)"),
    n: Optional[int] = typer.Option(None, "--n", help="estimate on a stratified subsample of N images"),
    max_images: int = typer.Option(1000, "--max-images", help="cap on images per side for features"),
    seed: int = typer.Option(0, "--seed"),
    prior: Optional[str] = typer.Option(
        None,
        "--prior",
        help="quadrant, or surface:PATH to show that surface's prior too (default: the surface tune would use, if any)",
    ),
    resolution: Optional[int] = typer.Option(
        None, "--resolution", help="the tune job to forecast: training input size in px (default 64; 224 on a GPU)"
    ),
    trials: Optional[int] = typer.Option(None, "--trials", help="the tune job to forecast: search trials (default 20)"),
    time_budget: Optional[str] = typer.Option(
        None, "--time-budget", help="the tune job to forecast: the whole job's time (600, 90s, 10m, 1h)"
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """Measure a target task: size, divergence by depth, transferability, placement and prior.

    Shows the quadrant prior and, when a surface has points for the model, the surface prior that
    `tune` would start from; and the forecast of the score of what `tune` would hand back for the
    job (--n, --model, --resolution, --trials / --time-budget), with an 80% interval and the past
    studies it stands on. With --models (or --model auto) it scores each candidate instead:
    LogME, LEEP, NLEEP, similarity, parameters and training images/s at the study's resolution,
    best NLEEP first, dropping those another beats while training faster.

    Examples:
      autotransfer estimate builtin:animals --n 500
      autotransfer estimate builtin:elpv --n 1000 --time-budget 10m
      autotransfer estimate builtin:elpv --n 200 --model auto
      autotransfer estimate builtin:digits --models fashion-source,efficientnet_lite0 --format json
      autotransfer estimate builtin:fashion-mnist?classes=5-9 --model fashion-source --source builtin:fashion-mnist?classes=0-4
      autotransfer estimate builtin:digits --model fashion-source --prior surface:benchmarks/surface-lab.json
    """
    from autotransfer.backbones import AUTO_MODELS
    from autotransfer.pipeline.estimate import estimate_candidates, estimate_task

    if models is not None or model == AUTO_MODELS:
        if models is not None and model is not None:
            raise UserError(f"give --model or --models, not both (got --model {model!r} and --models {models!r})")
        for flag, value in (("--source", source), ("--prior", prior)):
            if value is not None:
                raise UserError(f"{flag} applies to one model: leave it out with --models or --model auto")
        result = estimate_candidates(
            target,
            models if models is not None else AUTO_MODELS,
            n=n,
            max_images=max_images,
            seed=seed,
            progress=fmt is OutputFormat.table,
            log=lambda line: err_console.print(line, highlight=False, markup=False),
        )
        if fmt is OutputFormat.json:
            _print_json(result.to_dict())
            return
        from autotransfer.report.candidate_table import candidate_table

        console.print(candidate_table(result))
        return
    measured = estimate_task(
        target,
        model or "efficientnet_lite0",
        source=source,
        n=n,
        max_images=max_images,
        seed=seed,
        prior=prior,
        progress=fmt is OutputFormat.table,
        resolution=resolution,
        trials=trials,
        time_budget=time_budget,
    )
    profile, surface = measured.profile, measured.surface_prior
    if fmt is OutputFormat.json:
        _print_json(measured.to_dict())
        return
    from autotransfer.report.profile_table import prior_table, profile_tables

    for table in profile_tables(profile):
        console.print(table)
    if surface is not None:
        console.print(prior_table(surface))
    if measured.forecast is not None:
        console.print(measured.forecast.describe(), markup=False)
        for note in measured.forecast.notes:
            console.print(f"  {note}", markup=False)


@app.command("tune")
def tune_cmd(
    target: Optional[str] = typer.Argument(None, help="dataset spec; omitted: the embedded default demo"),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="model spec (default efficientnet_lite0); auto: choose from the offline zoo"
    ),
    models: Optional[str] = typer.Option(
        None,
        "--models",
        help="candidate models, comma-separated (or auto): the estimator ranks them, the first 2 race on short"
        " studies and the winner's study is continued (default budget 1.5x one model's)",
    ),
    trials: Optional[int] = typer.Option(
        None, "--trials", help="finished search trials, controls excluded (default 20, within the default budget)"
    ),
    time_budget: Optional[str] = typer.Option(
        None,
        "--time-budget",
        help="the whole job's time: 600, 90s, 10m, 1h (default without --trials: about 5 full trainings at this size)",
    ),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop starting trials after S seconds"),
    study: Optional[str] = typer.Option(None, "--study", help="study name (default: from target, model, n, seed)"),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="Optuna storage URL (default $AUTOTRANSFER_STORAGE, else OUT/autotransfer.db)"
    ),
    out: str = typer.Option(
        "studies",
        "--out",
        help="the folder for everything tune writes: the model (runs/STUDY), the export (exports/STUDY.yaml), the surface (surface.json, unless $AUTOTRANSFER_SURFACE) and the default storage",
    ),
    n: Optional[int] = typer.Option(None, "--n", help="stratified subsample of N images"),
    resolution: Optional[int] = typer.Option(
        None, "--resolution", help="training input size in px (default 64; 224 on a GPU)"
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="default 32; 128 on a GPU"),
    steps: Optional[int] = typer.Option(None, "--steps", help="budget in optimizer steps (default from size)"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd (default) or adamw"),
    prior: Optional[str] = typer.Option(
        None, "--prior", help="surface:PATH (default when OUT/surface.json has points for the model), quadrant or none"
    ),
    warm_start: Optional[str] = typer.Option(
        None, "--warm-start", help="enqueue the top protocols of an earlier study"
    ),
    prune: bool = typer.Option(
        True, "--prune/--no-prune", help="noise-aware successive-halving pruning of sampled trials"
    ),
    pick: Optional[str] = typer.Option(
        None,
        "--pick",
        help="ensemble (default: the top 3 protocols retrained on train+val, probabilities averaged), cv (cross-validate the top 3 on train+val, keep the best) or val (the best validation trial)",
    ),
    deliver: Optional[str] = typer.Option(
        None,
        "--deliver",
        help="what the model folder holds: ensemble (default: the members; autotransfer, the card's timm"
        " snippet and ONNX average them), distilled (one network trained on the ensemble's soft targets, what"
        " every loader reads; about 2 trainings more) or soup (the members' weight average)",
    ),
    schedules: Optional[str] = typer.Option(
        None,
        "--schedules",
        help="the schedules to search, comma-separated (default one-stage,lp-ft,gradual): one-stage trains"
        " every unfrozen group from the start, lp-ft trains the head first, gradual unfreezes top-down",
    ),
    unlabelled: Optional[str] = typer.Option(
        None,
        "--unlabelled",
        help="a folder of unlabelled images of the target: self-train the handed-back model on its confident"
        " pseudo-labels, kept only if it beats the teacher on validation",
    ),
    pseudo_threshold: Optional[float] = typer.Option(
        None, "--pseudo-threshold", help="least teacher probability for a pseudo-label (default 0.9)"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    workers: int = typer.Option(
        1, "--workers", help="local worker processes for the search: one per GPU; on CPU each gets cores // N threads"
    ),
    data_curve: Optional[bool] = typer.Option(
        None,
        "--data-curve/--no-data-curve",
        help="after the study, train the picked protocol on 25/50/100% of the train split and forecast what"
        " more labelled images buy (default: when the time budget holds room for it; not with --trials alone)",
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
) -> None:
    """Search the best fine-tuning protocol for TARGET with real trials; export it and the model.

    Runs: estimate → prior → controls + search → the final model (the top 3 retrained on train+val,
    or the trials' own models when the time budget cannot afford it) → test → export. The whole job
    fits in --time-budget; without it and without --trials, in the default budget of about 5 full
    trainings. The summary ends with the compute ledger. Re-running the same study resumes it. Everything lands under --out (default studies/): the model
    folder runs/STUDY, the export exports/STUDY.yaml, the surface, and the studies' database unless
    --storage or $AUTOTRANSFER_STORAGE names another. Progress goes to stderr, results to stdout.

    Examples:
      autotransfer tune                       # the embedded demo (under 2 min on 2 CPU cores)
      autotransfer tune builtin:digits --out runs/digits --format json > digits.json
      autotransfer tune builtin:elpv --n 1000 --time-budget 10m   # the best it can in 10 minutes
      autotransfer tune builtin:elpv --n 600 --trials 20 --resolution 64
      autotransfer tune folder:~/data/leaves --model timm:resnet50 --device cuda --trials 40
      autotransfer tune builtin:elpv --n 600 --trials 40 --workers 4   # 4 local workers (one per GPU)
      autotransfer tune folder:~/data/leaves --unlabelled ~/data/leaves-unlabelled   # self-training
      autotransfer tune builtin:animals --n 200 --model auto   # which model, and how to fine-tune it
    """
    from autotransfer.core.diskspace import disk_full_as_user_error
    from autotransfer.pipeline.options import on_surface, tune_outputs
    from autotransfer.pipeline.tune_job import tune_job
    from autotransfer.search.progress import make_ui
    from autotransfer.search.storage import masked_url, storage_location

    outputs = tune_outputs(out, storage)
    ui = make_ui(err_console)  # progress on stderr in either format: stdout carries only the result
    # a full disk (SQLite only says "database or disk is full") is one line naming the database
    location = storage_location(outputs.storage)
    database = location[len("sqlite:///") :] if location.startswith("sqlite:///") else outputs.folder
    with disk_full_as_user_error(database, then="run tune again: the study resumes with the trials it recorded"):
        result = tune_job(
            target,
            out=out,
            storage=storage,
            study=study,
            trials=trials,
            time_budget=time_budget,
            timeout=timeout,
            warm_start=warm_start,
            workers=workers,
            prune=prune,
            progress=ui,
            estimator_progress=True,
            models=models,
            model=model,
            n=n,
            resolution=resolution,
            batch_size=batch_size,
            steps=steps,
            optimizer=optimizer,
            prior=prior,
            device=device,
            seed=seed,
            pick=pick,
            deliver=deliver,
            schedules=schedules,
            unlabelled=unlabelled,
            pseudo_threshold=pseudo_threshold,
            data_curve=data_curve,
        )
    if fmt is OutputFormat.json:
        payload = result.to_dict()
        payload["storage"] = masked_url(str(payload.get("storage") or ""))
        payload["surface"] = {"path": str(outputs.surface), "recorded": on_surface(outputs.surface, result.study_name)}
        _print_json(payload)
    else:
        from autotransfer.report.summary import summary_table

        console.print(summary_table(result))
    if result.model_path is None:  # nothing handed back: not a success (README, "CLI reference": exit 1)
        why = (
            f"--timeout {timeout:g} s ran out first"
            if timeout is not None
            else "every transfer trial failed or was pruned"
        )
        err_console.print(
            f"[red]error:[/red] nothing handed back: no transfer trial completed ({why}); run the same command"
            " again to resume the study",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command("worker")
def worker_cmd(
    study: str = typer.Option(..., "--study", help="name of an existing study"),
    storage: Optional[str] = typer.Option(
        None,
        "--storage",
        help="the study's storage URL, e.g. postgresql://user:pass@host/db (default $AUTOTRANSFER_STORAGE, else sqlite:///studies/autotransfer.db)",
    ),
    device: str = typer.Option("auto", "--device", help="this machine's device: auto (default), cpu, cuda or cuda:N"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop starting trials after S seconds"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars; only warnings and errors"),
    out: Optional[str] = typer.Option(None, "--out", help=_OUT_HELP),
) -> None:
    """Join an existing study as one more worker; run its trials until its budget is met.

    The study holds everything a worker needs (settings, budget, prior, data fingerprint), so
    its name and storage are enough. The worker refuses to start when its data or package
    versions differ from the study's. Run one per GPU or machine; a killed worker's trial is
    retried by another. Use PostgreSQL for many machines, SQLite for one.

    Examples:
      autotransfer worker --study elpv-efficientnet_lite0-n600-s0 --storage postgresql://at:secret@db.lan/autotransfer
      CUDA_VISIBLE_DEVICES=1 autotransfer worker --study my-study --storage postgresql://at:secret@db.lan/autotransfer
      autotransfer worker --study j1 --out runs/j1          # the study `tune --out runs/j1` made
    """
    from autotransfer.search.progress import NullUI, RichUI
    from autotransfer.search.storage import study_storage
    from autotransfer.search.workers import run_worker

    ui = NullUI() if quiet else RichUI()
    done = run_worker(
        study, study_storage(storage, out), device=device, threads=threads, timeout=timeout, ui=ui, quiet=quiet
    )
    err_console.print(f"worker done: study {study!r} has {done} finished search trials")


@app.command("export")
def export_cmd(
    study: str = typer.Argument(..., help="study name"),
    fmt: str = typer.Option(
        "yaml",
        "--format",
        help="yaml or json (the protocol with its provenance, for train --config), timm (an args file for timm's"
        " train.py) or script (a Python file that trains the protocol with torch and timm alone)",
    ),
    output: Optional[str] = typer.Option(
        None, "-o", "--output", help="file to write (default: stdout; timm and script need a file)"
    ),
    storage: Optional[str] = typer.Option(None, "--storage", help=_READ_STORAGE_HELP),
    out: Optional[str] = typer.Option(None, "--out", help=_OUT_HELP),
) -> None:
    """Write a study's best protocol with its provenance, or as something that trains it outside autotransfer.

    timm and script also write the source weights beside the file (FILE-init.safetensors, timm's key
    names), and list on stderr what the format cannot express.

    Examples:
      autotransfer export animals-efficientnet_lite0-n600-s0 -o best.yaml
      autotransfer export my-study --format timm -o args.yaml     # python train.py --config args.yaml --data-dir DATA
      autotransfer export my-study --format script -o train_my_study.py   # python train_my_study.py DATA --out model/
      autotransfer export j1 --out runs/j1 -o best.yaml      # the study `tune --out runs/j1` made
    """
    import tempfile
    from pathlib import Path

    from autotransfer.handback.export import (
        EXPORT_FORMATS,
        FILE_FORMATS,
        export_payload,
        not_expressed,
        source_backbone,
        source_model,
        weights_path,
        write_export,
    )
    from autotransfer.search.storage import open_existing_storage, study_storage
    from autotransfer.search.study import load_study

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, but got {fmt!r}")
    if fmt in FILE_FORMATS and not output:
        raise UserError(f"--format {fmt} writes a weights file beside its output: give the file to write with -o")
    payload = export_payload(load_study(study, open_existing_storage(study_storage(storage, out))))
    if not output:
        with tempfile.TemporaryDirectory() as tmp:
            typer.echo(write_export(payload, Path(tmp) / "export", fmt).read_text(), nl=False)
        return
    backbone = source_backbone(payload) if fmt in FILE_FORMATS else None
    path = write_export(payload, output, fmt, backbone=backbone)
    written = f"{path} and {weights_path(path)}" if backbone is not None else str(path)
    err_console.print(f"wrote {written}", highlight=False, soft_wrap=True)
    if fmt == "script":
        err_console.print(
            f"run: python {path} DATA_DIR --out MODEL_DIR   (DATA_DIR: one folder of images per class)",
            highlight=False,
            soft_wrap=True,
        )
    missing = not_expressed(payload, fmt, source_model(backbone) if backbone is not None else None)
    if fmt == "timm":
        err_console.print(
            "timm's train.py cannot express:" if missing else "timm's train.py expresses all of this protocol",
            highlight=False,
        )
    for line in missing:
        err_console.print(f"  - {line}", highlight=False, soft_wrap=True)


@app.command("train")
def train_cmd(
    config: str = typer.Option(..., "--config", "-c", help="an export written by `autotransfer export`"),
    output: str = typer.Option(
        "studies/runs/final",
        "-o",
        "--output",
        help="the model folder to write (config.json + model.safetensors + README.md) and metrics.json",
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N"),
) -> None:
    """Reproduce the final model from an exported protocol: train on train+val, test, save.

    Writes a model folder in timm's format (load it with `autotransfer predict`, `autotransfer.load_model`
    or `timm.create_model("local-dir:DIR", pretrained=True)`) and metrics.json.

    Example: autotransfer train --config best.yaml -o runs/best
    """
    from autotransfer.handback.export import read_export
    from autotransfer.pipeline.reproduce import train_from_config
    from autotransfer.search.progress import make_ui

    ui = make_ui(err_console)  # a bar per training on a terminal, a line per training in a log
    try:
        metrics = train_from_config(read_export(config), output, device=device, progress=ui.trial_progress)
    finally:
        ui.close()
    console.print(
        f"test {metrics['metric']} = [bold]{metrics['test_score']:.4f}[/bold]"
        f" (at export: {metrics['exported_test_score']}); wrote the model folder {output}/ and metrics.json"
    )
    for warning in metrics.get("warnings", []):
        err_console.print(f"[bold red]WARNING:[/bold red] {warning}", highlight=False, soft_wrap=True)


@app.command("predict")
def predict_cmd(
    model_dir: str = typer.Argument(
        ..., help="a model folder written by tune or train --config, or an .onnx file from export-model"
    ),
    images: list[str] = typer.Argument(..., help="image files, folders (walked) or CSV manifests (a path column)"),
    top_k: int = typer.Option(1, "--top-k", "-k", help="the K most probable classes per image"),
    fmt: PredictFormat = typer.Option(PredictFormat.table, "--format", help="table, csv or json"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    allow_outside: bool = typer.Option(
        False, "--allow-outside", help="let CSV manifest rows name absolute paths or paths outside the CSV's folder"
    ),
) -> None:
    """Classify images with a tuned model: results on stdout, progress and skipped files on stderr.

    Files that are missing or not images are skipped and counted. Images are read and scored in
    batches (memory does not grow with their number); CSV manifest rows must stay inside the
    manifest's folder unless --allow-outside.

    Examples:
      autotransfer predict studies/runs/my-study photo.png more-photos/ --top-k 3
      autotransfer predict studies/runs/my-study unlabelled/ --format csv > predictions.csv
    """
    import csv as csv_module

    from autotransfer.handback.predict import list_image_files, load_model

    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, but got {top_k!r}")
    predictor = load_model(model_dir, device=device)
    files, missing = list_image_files(images, allow_outside=allow_outside)
    with _progress_bar("predicting", len(files)) as advance:
        found = predictor.predict_files(files, progress=advance)
    skipped = missing + found.skipped
    k = min(top_k, len(predictor.classes_))
    rows = found.top(predictor.classes_, k)
    names = ", ".join(p for p, _ in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    if not rows:
        listed = f" ({names})" if names else ""
        raise UserError(
            f"no readable images among the {len(files) + len(missing)} file(s) given{listed}; check the paths"
        )
    if skipped:
        err_console.print(
            f"skipped {len(skipped)} file(s) that are missing or not images: {names}", highlight=False, soft_wrap=True
        )
    if fmt is PredictFormat.json:
        _print_json(
            {
                "model": model_dir,
                "predictions": [
                    {"path": p, "top": [{"class": c, "probability": v} for c, v in top]} for p, top in rows
                ],
                "skipped": [{"path": p, "reason": r} for p, r in skipped],
            }
        )
        return
    if fmt is PredictFormat.csv:
        writer = csv_module.writer(sys.stdout, lineterminator="\n")
        header = ["path"] + [f"{name}_{i + 1}" for i in range(k) for name in ("class", "probability")]
        writer.writerow(header)
        for path, top in rows:
            writer.writerow([path] + [x for c, v in top for x in (c, f"{v:.6f}")])
        return
    table = Table(title=f"{len(rows)} image(s), model {model_dir}", title_justify="left")
    table.add_column("path")
    for i in range(k):
        table.add_column("class" if k == 1 else f"#{i + 1}")
        table.add_column("probability", justify="right")
    for path, top in rows:
        table.add_row(path, *[x for c, v in top for x in (c, f"{v:.4f}")])
    console.print(table)


@app.command("evaluate")
def evaluate_cmd(
    model_dir: str = typer.Argument(
        ..., help="a model folder written by tune or train --config, or an .onnx file from export-model"
    ),
    target: Optional[str] = typer.Argument(
        None, help="labelled images: folder:PATH, a CSV manifest or builtin:NAME; omitted: the study's own test split"
    ),
    metric: Optional[str] = typer.Option(None, "--metric", help="accuracy or balanced_accuracy (default: the study's)"),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
    html: Optional[str] = typer.Option(
        None, "--html", help="also write a page with the confusion matrix and per-class bars"
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
) -> None:
    """Score a tuned model on labelled images: the metric with its 95% interval, per-class
    precision and recall, the confusion matrix.

    Without TARGET it re-creates the study's held-out test split, which reproduces the test score
    tune printed. TARGET's class names must be among the model's (a subset is fine).

    Examples:
      autotransfer evaluate studies/runs/my-study
      autotransfer evaluate studies/runs/my-study folder:~/data/new-labelled --format json
      autotransfer evaluate studies/runs/my-study builtin:digits --html evaluation.html
    """
    from autotransfer.handback.evaluate import evaluate_model
    from autotransfer.handback.predict import load_model

    predictor = load_model(model_dir, device=device)
    with _progress_bar("evaluating", 0) as advance:
        info = evaluate_model(predictor, target, metric=metric, progress=advance)
    if html:
        from autotransfer.report.evaluation import write_evaluation_html

        err_console.print(f"wrote {write_evaluation_html(info, html, model_dir)}", highlight=False)
    if info.skipped:
        err_console.print(f"skipped {info.skipped} file(s) that are missing or not images", highlight=False)
    if fmt is OutputFormat.json:
        _print_json({"model": model_dir, **info.to_dict()})
        return
    console.print(
        f"[bold]{info.metric}: {info.score:.4f}[/bold] on {info.images} images of {info.target}"
        f" (95% interval {info.low:.3f}–{info.high:.3f})",
        highlight=False,
    )
    per_class = Table(title="per class", title_justify="left")
    for col in ("class", "precision", "recall", "images"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for c, p, r, n in zip(info.classes, info.precision, info.recall, info.support):
        per_class.add_row(c, f"{p:.3f}", f"{r:.3f}", str(n))
    console.print(per_class)
    confusion = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    confusion.add_column("true \\ predicted")
    for c in info.classes:
        confusion.add_column(c, justify="right")
    for c, row in zip(info.classes, info.confusion):
        confusion.add_row(c, *[str(v) for v in row])
    console.print(confusion)


class ModelFormat(str, Enum):
    onnx = "onnx"


@app.command("export-model")
def export_model_cmd(
    model_dir: str = typer.Argument(..., help="a model folder written by tune or train --config (an ensemble too)"),
    fmt: ModelFormat = typer.Option(
        ModelFormat.onnx, "--format", help="onnx (needs pip install 'autotransfer\\[onnx]')"
    ),
    output: str = typer.Option(..., "-o", "--output", help="the .onnx file to write (its folder must exist)"),
) -> None:
    """Write a model folder as one ONNX graph to run without autotransfer (onnxruntime, any ONNX runtime).

    Input `pixel_values` (batch, 3, S, S) float32, preprocessed as the folder says (shorter side
    resized to S, centre crop, (x / 255 - mean) / std); output `probabilities` (batch, K), the
    softmax (an ensemble's: the mean of its members'). Class names and preprocessing are in the
    file's metadata; `autotransfer predict` and `evaluate` take the .onnx file like a folder.

    Examples:
      autotransfer export-model studies/runs/my-study --format onnx -o my-study.onnx
      autotransfer predict my-study.onnx photos/ --top-k 3
    """
    from autotransfer.core.diskspace import format_bytes
    from autotransfer.handback.onnx_export import export_onnx

    info = export_onnx(model_dir, output)
    console.print(
        f"wrote {info.path} ({format_bytes(info.bytes)}, {info.kind}, opset {info.opset}) in {info.seconds:.1f} s;"
        f" onnxruntime agrees with the model to {info.max_abs_diff:.1e}",
        highlight=False,
        soft_wrap=True,
    )


@contextmanager
def _progress_bar(label: str, total: int):
    """A transient progress bar on stderr; yields ``advance(done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=total or None)

        def advance(done: int, of: int) -> None:
            bar.update(task, completed=done, total=of)

        yield advance


cache_app = typer.Typer(
    help="Show or clear the cache of decoded images ($AUTOTRANSFER_CACHE, else ~/.cache/autotransfer).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info_cmd(fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json")) -> None:
    """Where the cache is, what it holds and its cap ($AUTOTRANSFER_CACHE_MAX, default 2G).

    Example: autotransfer cache info
    """
    from autotransfer.core.diskspace import format_bytes
    from autotransfer.data.cache import cache_info

    info = cache_info()
    if fmt is OutputFormat.json:
        _print_json({"root": str(info.root), "files": info.files, "bytes": info.bytes, "limit": info.limit})
        return
    cap = "no cap" if info.limit is None else f"cap {format_bytes(info.limit)}"
    console.print(f"{info.root}: {info.files} files, {format_bytes(info.bytes)} ({cap})", highlight=False)


@cache_app.command("clear")
def cache_clear_cmd() -> None:
    """Remove every cached image and dataset array (they are rebuilt when needed).

    Example: autotransfer cache clear
    """
    from autotransfer.core.diskspace import format_bytes
    from autotransfer.data.cache import cache_info, clear_cache

    files, freed = clear_cache()
    console.print(f"removed {files} files ({format_bytes(freed)}) from {cache_info().root}", highlight=False)


@app.command("surface")
def surface_cmd(
    targets: Optional[str] = typer.Option(None, "--targets", help="comma-separated dataset specs"),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="comma-separated sizes, e.g. 100,300,1000"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    seeds: int = typer.Option(1, "--seeds", help="K seeds: 0..K-1"),
    trials: Optional[int] = typer.Option(None, "--trials"),
    resolution: Optional[int] = typer.Option(None, "--resolution"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    device: Optional[str] = typer.Option(None, "--device"),
    spec: Optional[str] = typer.Option(None, "--spec", help="YAML sweep spec (see studies/sweep-small.yaml)"),
    storage: Optional[str] = typer.Option(
        None,
        "--storage",
        help="Optuna storage URL (default $AUTOTRANSFER_STORAGE, else sqlite:///studies/autotransfer.db)",
    ),
    store: Optional[str] = typer.Option(None, "--store", help="surface store (default studies/surface.json)"),
    html: Optional[str] = typer.Option(
        None,
        "--html",
        help="write the fitted surface (and, from --storage, accuracy along protocol slices) as self-contained HTML",
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format"),
) -> None:
    """Sweep targets x sizes x seeds (one study each, resumable), record each best protocol, fit the surface.

    Examples:
      autotransfer surface --targets builtin:mnist5k,builtin:animals --sizes 100,300,1000 --model fashion-source --seeds 2
      autotransfer surface --spec studies/sweep-small.yaml --html studies/surface.html
      autotransfer surface --html studies/surface.html      # only fit + draw the recorded points
    """
    from autotransfer.pipeline.sweep import surface_job, sweep_from_options
    from autotransfer.search.progress import NullUI, RichUI

    sweep = sweep_from_options(spec=spec, targets=targets, sizes=sizes, model=model, seeds=seeds, trials=trials)
    out = surface_job(
        sweep,
        model=model,
        trials=trials,
        overrides={"resolution": resolution, "steps": steps, "device": device},
        storage=storage,
        store=store,
        html=html,
        ui=RichUI() if fmt is OutputFormat.table else NullUI(),
    )
    if fmt is OutputFormat.json:
        _print_json(out)
        return
    for entry in out.get("studies", []):
        console.print(f"{entry['status']:>7}  {entry['study']}  ({entry['seconds']:.0f} s) {'; '.join(entry['notes'])}")
    console.print(f"{out['points']} surface points in {out['store']}" + (f"; wrote {out['html']}" if html else ""))


@app.command("dashboard")
def dashboard_cmd(
    storage: Optional[str] = typer.Option(None, "--storage", help=_READ_STORAGE_HELP),
    out: Optional[str] = typer.Option(None, "--out", help=_OUT_HELP),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="address to listen on (default: this machine only; the dashboard has no login and can edit and delete"
        " studies, so another address warns)",
    ),
    port: int = typer.Option(8080, "--port", help="port to serve on"),
    study: Optional[str] = typer.Option(None, "--study", help="attach views to this study only and print its page"),
) -> None:
    """Serve optuna-dashboard on the studies, with autotransfer's figures and notes attached.

    Before serving, every autotransfer study gets (under fixed ids, so a restart replaces them):
    the excess-divergence profile by depth, protocol against score, the controls against the
    best protocol, the prior against the found protocol, and the surface when one exists. Its
    task profile and prior become the study's note (the dashboard's Note page).

    Examples:
      autotransfer dashboard
      autotransfer dashboard --storage sqlite:///studies/autotransfer.db --port 8081
      autotransfer dashboard --study animals-efficientnet_lite0-n600-s0
      autotransfer dashboard --out runs/j1                   # the studies `tune --out runs/j1` made
    """
    from autotransfer.report.dashboard import run_dashboard
    from autotransfer.search.storage import study_storage

    run_dashboard(
        study_storage(storage, out),
        study_name=study,
        host=host,
        port=port,
        announce=lambda line: console.print(line, highlight=False, soft_wrap=True),
        warn=lambda line: err_console.print(f"[bold red]WARNING:[/bold red] {line}", highlight=False, soft_wrap=True),
    )


@app.command("report")
def report_cmd(
    study: str = typer.Argument(..., help="study name"),
    output: str = typer.Option("report.html", "-o", "--output", help="HTML file to write"),
    storage: Optional[str] = typer.Option(None, "--storage", help=_READ_STORAGE_HELP),
    out: Optional[str] = typer.Option(None, "--out", help=_OUT_HELP),
) -> None:
    """Write one self-contained HTML page about a study (plotly inline: no network needed to view it).

    It shows the task profile, the prior against the found protocol, the optimisation history,
    parameter importances, protocol against score, the controls, the held-out test score and
    the exported config.

    Examples:
      autotransfer report animals-efficientnet_lite0-n600-s0 -o report.html
      autotransfer report j1 --out runs/j1 -o report.html    # the study `tune --out runs/j1` made
    """
    from autotransfer.report.html import write_study_report
    from autotransfer.search.storage import study_storage

    path = write_study_report(study, output, study_storage(storage, out))
    err_console.print(f"wrote {path}")


#: The console-script entry point (``autotransfer = "autotransfer.cli:main"``).
main = app


if __name__ == "__main__":
    main()
