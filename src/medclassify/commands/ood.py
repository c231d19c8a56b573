"""shift and fit-guard: the out-of-distribution guard of a run, and the check of new images against it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import _reporter, app


@app.command()
def shift(
    run: Path = typer.Argument(..., help="Run directory."),
    data: Path = typer.Argument(..., help="A folder of images, or a dataset (class folders, split folders, labels CSV)."),
    split: str = typer.Option(None, "--split", help="Only this split of DATA (e.g. test)."),
    seed: int = typer.Option(0, help="Seed of the permutation test's draws."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Do these images come from the run's training distribution? The out-of-distribution flag rate and an
    MMD two-sample test (permutation p-value) of their features against held-out training-distribution images."""
    from ..evaluation.shift import check_data

    check = check_data(run, data, split=split, reporter=_reporter(quiet), seed=seed)
    if as_json:
        typer.echo(json.dumps(check, indent=2))
        return
    typer.echo(f"{check['images']} image(s) of {check['name']} against {check['reference_images']} {check['reference']} "
               f"image(s): flagged out-of-distribution {check['flagged']:.1%} (expected {check['expected_flagged']:.0%}), "
               f"MMD p = {check['p_value']:.3g} ({check['test']['permutations']} permutations, seed {seed}).")
    typer.secho(check["message"], fg="yellow" if check["shift"] else None, bold=check["shift"])


@app.command("fit-guard")
def fit_guard_cmd(
    run: Path = typer.Argument(..., help="Run directory (trained before the guard existed, or to re-fit)."),
    quantile: float = typer.Option(0.95, "--quantile", min=0.5, max=0.9999,
                                   help="Share of validation images that count as in-distribution."),
    method: str = typer.Option("mahalanobis", "--method", help="mahalanobis (nearest class mean, shared covariance) "
                                                              "or knn (cosine distance to the 10th nearest training image)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Fit the out-of-distribution guard of an existing run on its training images (needs them on disk)."""
    from ..errors import ConfigError
    from ..io import check_output_file, check_writable_folder
    from ..ood import METHODS, fit_guard
    from ..run import load_run

    if method not in METHODS:
        raise ConfigError(f"Unknown --method {method!r}.", f"use one of: {', '.join(METHODS)}.")
    r = load_run(run)
    check_writable_folder(r.path, what="run directory")
    check_output_file(r.path / "ood.safetensors", what="guard file")
    rec = fit_guard(r, _reporter(quiet), quantile=quantile, method=method)
    if rec.get("status") == "fitted":
        typer.echo(f"Guard fitted ({rec['method']}, threshold {rec['threshold']:.4g}, {rec['held_out_flagged']:.1%} of "
                   f"{rec['held_out_images']} held-out images flagged) in {r.path / rec['file']}")
    else:
        from ..errors import RunError

        raise RunError(f"Run {r.path} gets no out-of-distribution guard: {rec.get('reason')}.",
                       "restore the images the run was trained on (split.csv lists them), then run fit-guard again.")
