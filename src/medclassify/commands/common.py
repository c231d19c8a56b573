"""What every command shares: the Typer app they register on, the reporter and the printer. Here,
not in cli.py, so the command modules never import cli.py, which imports them."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.console import Console

from ..config import PredictOptions
from ..errors import ConfigError
from ..reporting import Reporter
from ..version import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and use medical image classifiers from a folder of labelled images.")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"medclassify {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


def _reporter(quiet: bool = False) -> Reporter:
    return Reporter(quiet=quiet)


def _print(*renderables) -> None:
    console = Console()
    for r in renderables:
        console.print(r)


def _config(cls, command: str = "train", **values):
    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]).replace("_", "-") or "settings"
        raise ConfigError(f"Invalid --{field}: {err['msg']} (got {err.get('input')!r}).",
                          f"see `medclassify {command} --help`.") from None


def predict_options(command: str, **values):
    """The inference options of predict, serve and the cascades, validated once (config.PredictOptions)."""
    return _config(PredictOptions, command, **values)
