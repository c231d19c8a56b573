"""evaluate, report, explain and compare: statistics, the clinician's report and explanations."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .common import _print, _reporter, app


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory."),
    split: str = typer.Option("test", help="Split of the run to evaluate on."),
    data: Path = typer.Option(None, help="Evaluate on this labelled folder or CSV instead of a split."),
    target_sensitivity: float = typer.Option(None, "--target-sensitivity",
                                             help="Binary tasks: choose the threshold on validation for this sensitivity, e.g. 0.95."),
    target_specificity: float = typer.Option(None, "--target-specificity",
                                             help="Binary tasks: choose the threshold on validation for this specificity."),
    ordinal: bool = typer.Option(False, "--ordinal", help="Classes are grades: add the quadratic-weighted kappa."),
    order: str = typer.Option(None, "--order", help="With --ordinal: the classes from lowest to highest grade, comma-separated "
                                                    "(default: the run's class order)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=100, help="Bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Evaluate a run on its test split (or another split or folder) with 95% CIs and calibration;
    saves metrics/<split>.json in the run."""
    from ..evaluation.evaluate import evaluate as run_eval
    from ..evaluation.narrative import console_lines
    from ..evaluation.tables import metrics_table

    reporter = _reporter(quiet)
    if ordinal and order is None:
        reporter.info("--ordinal without --order: grades are taken in the run's class order (alphabetical folder names).")
    metrics = run_eval(run, split=split, data=data, reporter=reporter, target_sensitivity=target_sensitivity,
                       target_specificity=target_specificity, ordinal=ordinal, order=order, n_boot=bootstrap, seed=seed)
    _print(*metrics_table(metrics, f"{metrics['split']} ({metrics['n']} images)"))
    for line in console_lines(metrics["facts"]):
        typer.echo(line)
    for w in metrics["warnings"]:
        typer.secho(f"warning: {w['message']}", fg="yellow", bold=True)
    typer.echo(f"Metrics saved to {Path(run) / 'metrics' / (metrics['split'] + '.json')}")


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run directory."),
    split: str = typer.Option("test", help="Split to report on."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default: RUN/report.html)."),
    fresh: bool = typer.Option(False, "--fresh", help="Re-evaluate even when saved metrics are current."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Write a self-contained report.html: figures with CIs, curves, calibration, errors with Grad-CAM."""
    from ..reports.report import build_report

    path = build_report(run, split=split, out=out, reporter=_reporter(quiet), fresh=fresh)
    typer.echo(f"Report written to {path}")


@app.command()
def explain(
    run: Path = typer.Argument(..., help="Run directory."),
    image: Path = typer.Argument(..., help="An image file, or a folder of images (batch mode)."),
    method: str = typer.Option("gradcam", help="gradcam, gradcam++, lime, occlusion or activations."),
    out: Path = typer.Option(None, "--out", "-o", help="PNG to write for one image; a folder for a folder."),
    target: str = typer.Option(None, help="Class to explain (default: the predicted class)."),
    layer: str = typer.Option(None, help="Grad-CAM layer name (default: the last convolutional feature map)."),
    samples: int = typer.Option(1000, help="LIME: perturbed samples per image.", min=10),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Show what the model looked at: a heatmap over the image (or feature-map grids for activations)."""
    from ..explain import get_method
    from ..explain.batch import explain_files_detailed

    cls = get_method(method)
    options = {"samples": samples} if cls.name == "lime" else {}
    records = explain_files_detailed(run, image, method, out=out, target=target, layer=layer, reporter=_reporter(quiet),
                                     **options)
    written = [r["out"] for r in records]
    flat = [r for r in records if r["flat"]]
    typer.echo(f"{len(written)} explanation(s) written" + (f" to {written[0]}" if len(written) == 1 else
                                                          f" to {written[0].parent}" if written else ""))
    if len(records) == 1 and flat:
        typer.echo(f"{flat[0]['message'].capitalize()} ({cls.name} map is flat).")
    elif flat:
        typer.echo(f"{len(flat)} of them show no localised evidence (flat {cls.name} map), e.g. {Path(flat[0]['image']).name}.")


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Two or more run directories evaluated on the same test set."),
    split: str = typer.Option("test", help="Split to compare on."),
    out: Path = typer.Option(Path("compare.html"), "--out", "-o", help="HTML leaderboard to write."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Leaderboard with 95% CIs, McNemar's test (accuracy) and DeLong's test (AUC) between pairs."""
    from ..evaluation.compare import compare_runs, leaderboard_tables, write_compare_html
    from ..io import check_output_file

    check_output_file(out, protected_dirs=runs)  # before the runs are evaluated
    result = compare_runs(runs, split=split, reporter=_reporter(quiet))
    _print(*leaderboard_tables(result))
    typer.echo(f"Comparison written to {write_compare_html(result, out)}")
