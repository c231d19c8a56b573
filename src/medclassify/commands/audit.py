"""`medclassify audit` and `medclassify eda`: check a dataset before trusting a score on it."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import _reporter, app


@app.command()
def audit(
    data: Path = typer.Argument(..., help="Dataset: folder (class folders, optionally in split folders), labels CSV, MedMNIST .npz or C-NMC download."),
    out: Path = typer.Option(Path("audit"), "--out", "-o", help="Folder for audit.json and audit.html."),
    patient_pattern: str = typer.Option(None, "--patient-pattern", help="Regex with a named group 'patient', or a preset: kermany, cnmc."),
    splits: str = typer.Option(None, "--splits", help="Which top-level folder is which split, e.g. train=Training,test=External (other folders are left out)."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when splits leak (duplicates or patients across splits) or labels conflict."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Audit a dataset: counts, imbalance, sizes, unreadable files, exact and near duplicates, leakage, conflicting labels, patient overlap."""
    from ..data.audit import audit_dataset, write_audit
    from ..io import check_output_folder

    check_output_folder(out, inputs=[data], protected_dirs=[data] if data.is_dir() else [],
                        files=[out / "audit.json", out / "audit.html"])
    result = audit_dataset(data, patient_pattern, reporter=_reporter(quiet), splits=splits)
    lines = write_audit(result, out)
    for line in lines:
        typer.secho(line, fg="red" if line.startswith(("LEAKAGE", "CONFLICTING")) else None, bold=line.startswith(("LEAKAGE", "CONFLICTING")))
    typer.echo(f"Written: {out / 'audit.json'}, {out / 'audit.html'}")
    s = result.report["summary"]
    if strict and (s["leakage"] or s["conflicting_label_groups"]):
        typer.echo("error: --strict: the dataset leaks across splits or has conflicting labels (see above).", err=True)
        raise typer.Exit(1)


@app.command()
def eda(
    data: Path = typer.Argument(..., help="Dataset folder, labels CSV, MedMNIST .npz or C-NMC download."),
    out: Path = typer.Option(Path("eda"), "--out", "-o", help="Folder for the PNGs and eda.html."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Plots of a dataset: class distribution per split, samples per class, image sizes, intensities (PNG + eda.html)."""
    from ..data.eda import run_eda

    page = run_eda(data, out, reporter=_reporter(quiet))
    typer.echo(f"Written: {page} and its PNGs")
