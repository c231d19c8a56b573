"""Command line: parses, calls the library, prints. User mistakes end in one line and exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer


from .errors import MedClassifyError
from .reporting import printable

from .commands.common import _print, _reporter, app  # noqa: F401  (the app and helpers every command shares)


@app.command()
def train(
    data: Path = typer.Argument(..., help="Dataset: a folder with one sub-folder per class (optionally inside train/val/test), or a labels CSV."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to create."),
    model: str = typer.Option(None, help="Architecture: seed_cnn, efficientnet_lite0/1/2, or any timm name. Default: the recommended recipe."),
    epochs: int = typer.Option(None, help="Maximum number of epochs (the time budget may run fewer)."),
    image_size: int = typer.Option(None, "--image-size", help="Square input size in pixels."),
    time_budget: str = typer.Option(None, "--time-budget", help="Training time budget, e.g. 15m; sizes the epochs to this machine. 'off' to disable."),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    optimizer: str = typer.Option(None, help="adamw or sgd."),
    scheduler: str = typer.Option(None, help="cosine, step or constant (after warm-up)."),
    augment: str = typer.Option(None, help="Augmentation preset: none, light, medical, robust."),
    resize: str = typer.Option(None, help="pad (keep aspect ratio) or squash."),
    normalize: str = typer.Option(None, help="fixed (model mean/std), per-image standardisation, or equalize (per-image histogram equalisation, then fixed)."),
    channels: str = typer.Option(None, help="auto, 1 or 3."),
    imbalance: str = typer.Option(None, help="none, weights, sqrt-weights or sampler."),
    label_smoothing: float = typer.Option(None, "--label-smoothing"),
    ema: bool = typer.Option(None, "--ema/--no-ema", help="Keep an exponential moving average of the weights (about one epoch long) and validate and ship it."),
    freeze: int = typer.Option(None, "--freeze", help="Hold the first N feature stages (as timm counts them, stem included) of a pretrained backbone fixed: faster steps, less overfitting."),
    pretrained: str = typer.Option(None, help="auto, imagenet (offline, efficientnet_lite*), hub (online) or none."),
    weights: Path = typer.Option(None, help="Local state-dict or safetensors file to start from."),
    patient_pattern: str = typer.Option(None, "--patient-pattern", help="Regex with a named group 'patient' (or preset: kermany, cnmc) to keep each patient in one split."),
    splits: str = typer.Option(None, "--splits", help="Which top-level folder is which split, e.g. train=Training,test=External (other folders are left out)."),
    val_fraction: float = typer.Option(None, "--val-fraction"),
    test_fraction: float = typer.Option(None, "--test-fraction"),
    early_stopping: int = typer.Option(None, "--early-stopping", help="Patience in epochs; 0 disables."),
    monitor: str = typer.Option(None, help="Validation metric for the best checkpoint: balanced_accuracy, accuracy, macro_f1, auc, loss."),
    precision: str = typer.Option(None, help="auto, fp32 or bf16."),
    device: str = typer.Option(None, help="auto, cpu or cuda."),
    seed: int = typer.Option(None),
    threads: int = typer.Option(None, help="CPU threads for PyTorch."),
    track: str = typer.Option(None, "--track", help="none or mlflow: log settings, epochs, test figures and files to MLflow "
                                                 "(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME; pip install 'medclassify[track]')."),
    register: str = typer.Option(None, "--register", help="With --track mlflow: register the model under this name in MLflow's model registry."),
    dedupe: bool = typer.Option(None, "--dedupe", help="Keep only the held-out copy of duplicates that cross splits (test, then val) and drop duplicate groups with conflicting labels (counted)."),
    strict: bool = typer.Option(None, "--strict", help="Refuse to train when splits leak or duplicate labels conflict."),
    folds: int = typer.Option(None, "--folds", help="Group k-fold cross-validation: K runs under OUT/fold_k and OUT/cv_summary.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory (only a medclassify run), or discard an interrupted training's checkpoint."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted training (same arguments) from its last completed epoch."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="KEY=VALUE for any training setting, e.g. --set seed=1 "
                                              "--set warmup_epochs=1 (repeatable; see run.json's config for the keys)."),
):
    """Train a classifier and write a self-contained run directory."""
    from .config import TrainConfig, parse_duration, parse_overrides

    given = {k: v for k, v in dict(
        model=model, epochs=epochs, image_size=image_size, batch_size=batch_size, lr=lr, optimizer=optimizer,
        scheduler=scheduler, augment=augment, resize=resize, normalize=normalize, imbalance=imbalance,
        label_smoothing=label_smoothing, freeze=freeze, ema=ema, pretrained=pretrained, weights=str(weights) if weights else None,
        patient_pattern=patient_pattern, val_fraction=val_fraction, test_fraction=test_fraction,
        early_stopping=early_stopping, monitor=monitor, precision=precision, device=device, seed=seed, threads=threads,
        dedupe=dedupe, strict=strict, splits=splits, track=track, register_model=register,
    ).items() if v is not None}
    if channels is not None:
        given["channels"] = channels if channels == "auto" else int(channels) if channels.isdigit() else channels
    if time_budget is not None:
        given["time_budget"] = parse_duration(time_budget)
    given.update(parse_overrides(set_ or [], given))
    if "epochs" in given and "time_budget" not in given:
        given["time_budget"] = None  # an explicit epoch count is honoured exactly
    config = _config(TrainConfig, data=str(data), out=str(out), **given)
    from .evaluation.tables import metrics_table
    from .training.fit import train as run_training

    if folds is not None:
        from .training.crossval import cross_validate, summary_lines

        summary = cross_validate(config, folds, reporter=_reporter(quiet), overwrite=overwrite, resume=resume)
        typer.echo("\n".join(summary_lines(summary)))
        return
    result = run_training(config, reporter=_reporter(quiet), overwrite=overwrite, resume=resume)
    _print(*metrics_table(result.val_metrics, f"validation (best epoch {result.best_epoch})"))
    typer.echo(f"Run written to {result.run_dir}")


def _config(cls, **values):
    from pydantic import ValidationError

    from .errors import ConfigError

    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]).replace("_", "-")
        raise ConfigError(f"Invalid --{field}: {err['msg']} (got {err.get('input')!r}).", "see `medclassify train --help`.") from None


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
        typer.echo(printable(f"error: {e}"), err=True)
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
