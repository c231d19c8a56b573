"""Command line: parses, calls the library, prints. User mistakes end in one line and exit code 2."""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path
from typing import Literal, Optional

import typer


from .errors import MedClassifyError
from .reporting import printable

from .commands.common import _config, _print, _reporter, app  # noqa: F401  (the app and helpers every command shares)


# Options of `train` that are not TrainConfig fields: (name, annotation, typer.Option).
_TRAIN_EXTRA = [
    ("config_file", Optional[Path], typer.Option(None, "--config", metavar="FILE.yaml", help="YAML mapping of settings "
                                                  "(this command's option names, with underscores; a run's config.yaml "
                                                  "works); flags and --set override it.")),
    ("set_", Optional[list[str]], typer.Option(None, "--set", metavar="KEY=VALUE", help="Any setting, e.g. --set seed=1 "
                                               "--set warmup_epochs=1 (repeatable; the keys are the options above).")),
    ("folds", Optional[int], typer.Option(None, "--folds", help="Group k-fold cross-validation: K runs under OUT/fold_k "
                                          "and OUT/cv_summary.json.")),
    ("overwrite", bool, typer.Option(False, "--overwrite", help="Replace an existing run directory (only a medclassify "
                                     "run), or discard an interrupted training's checkpoint.")),
    ("resume", bool, typer.Option(False, "--resume", help="Continue an interrupted training (same arguments) from its "
                                  "last completed epoch.")),
    ("quiet", bool, typer.Option(False, "--quiet", "-q", help="Print only warnings and the result.")),
]
_CONFIG_FLAGS = {"image_size": "--image-size", "register_model": "--register"}  # spellings kept from before the options were generated


def _field_option(name: str, field) -> tuple[object, object]:
    """A TrainConfig field as a typer option: its type (Literal -> choices, bool -> --x/--no-x flag),
    its real default shown in --help, its description as the help text. Whether the user gave it is
    read from click's parameter source, so a config file sits between the defaults and the flags."""
    import typing

    flag = "--" + name.replace("_", "-")
    ann, default = field.annotation, field.default
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    shown: object = True
    if ann is bool:
        return bool, typer.Option(default, f"{flag}/--no-{name.replace('_', '-')}", help=field.description)
    if name == "time_budget":
        ann, default = Optional[str], "off"
    elif name == "channels":
        ann = Literal["auto", "1", "3"]
    elif typing.get_origin(ann) is Literal:
        pass
    elif args and typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = Optional[args[0]]
    if default is None:
        shown = False
    return ann, typer.Option(default, _CONFIG_FLAGS.get(name, flag), help=field.description, show_default=shown)


def _train_signature() -> inspect.Signature:
    from .config import TrainConfig

    P = inspect.Parameter
    fields = TrainConfig.model_fields
    params = [P("ctx", P.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
              P("data", P.POSITIONAL_OR_KEYWORD, annotation=Path, default=typer.Argument(..., help=fields["data"].description)),
              P("out", P.KEYWORD_ONLY, annotation=Path, default=typer.Option(..., "--out", "-o", help=fields["out"].description))]
    for name, field in fields.items():
        if name not in ("data", "out"):
            ann, option = _field_option(name, field)
            params.append(P(name, P.KEYWORD_ONLY, annotation=ann, default=option))
    params += [P(name, P.KEYWORD_ONLY, annotation=ann, default=option) for name, ann, option in _TRAIN_EXTRA]
    return inspect.Signature(params)


def resolve_train_config(data: Path, out: Path, values: dict, explicit: set[str], config_file: Optional[Path],
                         pairs: list[str]):
    """Defaults < the --config file < flags and --set; the result validated once as a TrainConfig."""
    from .config import TrainConfig, coerce_setting, load_config_file, parse_overrides

    settings = load_config_file(config_file) if config_file else {}
    given = {}
    for name in explicit:
        value = values[name]
        if name == "channels" and value != "auto":
            value = int(value)
        elif name == "time_budget":
            value = coerce_setting(name, value, "--time-budget")
        given[name] = value
    given.update(parse_overrides(pairs, given))
    settings.update(given)
    settings.update(data=str(data), out=str(out))
    return _config(TrainConfig, **settings)


def train(ctx: typer.Context, data: Path, out: Path, **values):
    """Train a classifier and write a self-contained run directory.

    The bare command trains the recommended recipe for a fixed number of epochs, so the same data, seed and version give the same model on any machine; --time-budget is the opt-in alternative."""
    extra = {name: values.pop(name) for name, _, _ in _TRAIN_EXTRA}
    explicit = {k for k in values if ctx.get_parameter_source(k).name not in ("DEFAULT", "DEFAULT_MAP")}
    config = resolve_train_config(data, out, values, explicit, extra["config_file"], extra["set_"] or [])
    from .evaluation.tables import metrics_table
    from .training.fit import train as run_training

    quiet, overwrite, resume = extra["quiet"], extra["overwrite"], extra["resume"]
    if extra["folds"] is not None:
        from .training.crossval import cross_validate, summary_lines

        summary = cross_validate(config, extra["folds"], reporter=_reporter(quiet), overwrite=overwrite, resume=resume)
        typer.echo("\n".join(summary_lines(summary)))
        return
    result = run_training(config, reporter=_reporter(quiet), overwrite=overwrite, resume=resume)
    if _worker_rank():  # under torchrun, rank 0 prints the result
        return
    _print(*metrics_table(result.val_metrics, f"validation (kept: {result.selection})"))
    typer.echo(f"Run written to {result.run_dir}")


train.__signature__ = _train_signature()
app.command()(train)


@app.command()
def models(all_timm: bool = typer.Option(False, "--timm", help="Also list every timm architecture.")):
    """List the model names train accepts."""
    from .models import get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        typer.echo(f"{name:22s} {spec.description}")
    if all_timm:
        import timm

        typer.echo("\n".join(timm.list_models()))


@app.command()
def demo(
    out: Path = typer.Option(Path("medclassify-demo"), "--out", "-o", help="Folder for the generated data and the run."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """End to end on a generated dataset: train, evaluate, predict (about a minute on 2 cores)."""
    from .demo import run_demo

    summary = run_demo(out, reporter=_reporter(quiet))
    typer.echo(summary)


def _worker_rank() -> int:
    """This process's rank under torchrun (0 outside it); read from the environment, so it holds
    before the process group exists and after it is gone."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


def _error_line(e: MedClassifyError) -> str | None:
    """The one error line. Under torchrun every rank runs the same command, so rank 0 prints the
    errors they all share (arguments, settings); another rank prints only its own, with its rank
    (training.distributed marks it), and nothing when it merely stopped because another rank did."""
    rank = _worker_rank()
    if not rank:
        return f"error: {e}"
    if getattr(e, "rank", None) is None or not getattr(e, "echo", True):
        return None
    return f"error: rank {rank}: {e}"


def main(argv: Optional[list[str]] = None) -> int:
    """The console script. Typer 0.29 bundles its own copy of Click, whose exceptions all derive from
    `typer.TyperException` (a check for `click.ClickException` misses them: that was a traceback for
    every parser error). The command is invoked here directly: `app(standalone_mode=False)` would turn
    Ctrl-C into a silent 130, and standalone mode calls sys.exit with rich-boxed errors."""
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        from .commands import register_all

        register_all()
        command = typer.main.get_command(app)
        with command.make_context("medclassify", args) as ctx:
            status = command.invoke(ctx)
    except MedClassifyError as e:
        line = _error_line(e)
        if line:
            typer.echo(printable(line), err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted (Ctrl-C)", err=True)
        return 130
    except typer.Exit as e:  # --help, --version, typer.Exit(n) from a command
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except typer.TyperException as e:  # Click's usage errors: the usage line, a hint, one error line
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"Error: {e.format_message()}", err=True)
        return int(getattr(e, "exit_code", 2))
    except BrokenPipeError:  # `medclassify models | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except OSError as e:
        if e.filename is None:
            raise
        # A safety net: the library reports the paths it knows about as MedClassifyErrors first.
        typer.echo(printable(f"error: {e.filename}: {e.strerror or e}. Fix: check the path, its permissions and the free disk space."),
                   err=True)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    # Run as `python -m medclassify.cli`: go through the package module so that the command modules
    # register on the same app object.
    from medclassify.cli import main as package_main

    sys.exit(package_main())
