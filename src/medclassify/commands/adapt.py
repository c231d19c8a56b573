"""adapt: a run's BatchNorm statistics re-estimated on a new site's unlabelled images."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import _reporter, app


@app.command()
def adapt(
    run: Path = typer.Argument(..., help="Run directory to adapt (left unchanged)."),
    images: Path = typer.Argument(..., help="Folder of the new site's images; labels (class folder names) are never read."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the adapted run."),
    guard: str = typer.Option("reweight", "--guard", help="reweight: the images count so that the classes the model "
                                                          "predicts for them have the training split's shares (guards "
                                                          "against a different class mix at the new site); none: plain AdaBN."),
    alpha: float = typer.Option(1.0, "--alpha", min=0.0, max=1.0, help="Weight of the new site's statistics (1: theirs "
                                                                       "alone; 0.5: halfway between training and new site)."),
    when: str = typer.Option("shift", "--when", help="shift: adapt only when the shift check finds the images differ "
                                                      "from the training distribution and the adapted model's "
                                                      "estimated accuracy on them (from its confidence) is higher "
                                                      "(else the new run keeps the source weights); always: adapt "
                                                      "regardless."),
    batch_size: int = typer.Option(32, "--batch-size", min=2, help="Images per forward pass."),
    seed: int = typer.Option(0, help="Seed of the order (and of the re-weighted draw) of the images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder (only a medclassify run)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Adapt a run to a new site's images (AdaBN, no labels used): writes a complete new run."""
    from ..errors import ConfigError
    from ..training.adapt import GUARDS, WHENS, adapt_run

    if guard not in GUARDS:
        raise ConfigError(f"Unknown --guard {guard!r}.", f"use one of: {', '.join(GUARDS)}.")
    if when not in WHENS:
        raise ConfigError(f"Unknown --when {when!r}.", f"use one of: {', '.join(WHENS)}.")
    result = adapt_run(run, images, out, guard=guard, alpha=alpha, overwrite=overwrite, batch_size=batch_size, seed=seed,
                       reporter=_reporter(quiet), when=when)
    skipped = f", {result.unreadable} unreadable left out" if result.unreadable else ""
    if not result.record["applied"]:
        est = result.record.get("estimate") or {}
        why = (f"adapting would not raise the estimated accuracy ({100 * est['source']:.1f}% -> {100 * est['adapted']:.1f}%)"
               if est.get("status") == "estimated" else f"no shift found (p = {result.record['shift']['p_value']:.3g})")
        typer.echo(f"Run written to {result.run_dir} with the source weights unchanged: {why}; {result.images} images{skipped}.")
        return
    typer.echo(f"Adapted run written to {result.run_dir} ({result.images} images{skipped}; "
               f"{result.record['bn_layers']} BatchNorm layers re-estimated, guard {guard}, alpha {alpha:g})")
