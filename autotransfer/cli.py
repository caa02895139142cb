"""The ``autotransfer`` command line: thin typer commands that call the library and print."""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autotransfer.errors import UserError

__all__ = ["app", "main"]

app = typer.Typer(
    help=(
        "Automated transfer-learning protocol search for image classification.\n\n"
        "Measures how big a target dataset is and how far it lies from a pretrained model's source,"
        " derives a prior fine-tuning protocol, searches around it with Optuna on real trials,"
        " and exports the best protocol and a fine-tuned model."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


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
    if groups or True:
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("group")
        table.add_column("parameters", justify="right")
        for i, (group_name, count) in enumerate(rows):
            table.add_row(str(i), group_name, f"{count:,}")
        console.print(table)


def main() -> None:
    """Console-script entry point: user errors print one line and exit 2."""
    try:
        app(standalone_mode=False)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted: everything already recorded is kept.")
        sys.exit(130)
    except (typer.Exit, SystemExit) as done:
        code = getattr(done, "exit_code", getattr(done, "code", 0))
        sys.exit(code)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(2)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
