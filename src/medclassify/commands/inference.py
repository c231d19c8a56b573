"""Commands that use trained runs: predict, export, train-cascade, evaluate-cascade."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer

from ..config import PredictOptions, predict_default
from .common import _print, _reporter, app, predict_options


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory."),
    inputs: List[Path] = typer.Argument(..., help="Image files, folders, or a CSV (path column) / TXT listing paths."),
    out: Path = typer.Option("predictions.csv", "--out", "-o", help="CSV to write."),
    patient_pattern: Optional[str] = typer.Option(None, "--patient-pattern", help="Regex with a named group 'patient' (or preset: kermany, cnmc): also write per-patient probabilities."),
    patient_agg: str = typer.Option("mean", "--patient-agg", help="mean or max of the image probabilities per patient."),
    patients_out: Optional[Path] = typer.Option(None, "--patients-out", help="Per-patient CSV (default: OUT with -patients before .csv)."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help=PredictOptions.model_fields["tta"].description),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: predict only part i of n of the sorted inputs (split a large job across machines)."),
    abstain_below: float = typer.Option(predict_default("abstain_below"), "--abstain-below",
                                        help=PredictOptions.model_fields["abstain_below"].description),
    backend: str = typer.Option(predict_default("backend"), help=PredictOptions.model_fields["backend"].description),
    batch_size: int = typer.Option(predict_default("batch_size"), "--batch-size",
                                   help=PredictOptions.model_fields["batch_size"].description),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Predict images with a trained run; writes per-class probabilities and the predicted class to a CSV."""
    from ..errors import ConfigError
    from ..inference.predictor import aggregate_patients, check_output_inputs, predict_files, write_patients_csv

    if patient_agg not in ("mean", "max"):
        raise ConfigError(f"Unknown --patient-agg {patient_agg!r}.", "use mean or max.")
    target = patients_out or out.with_name(out.stem + "-patients" + (out.suffix or ".csv"))
    if patient_pattern:  # both outputs are checked before any image is read
        check_output_inputs(target, run, inputs)
    options = predict_options("predict", backend=backend, tta=tta, abstain_below=abstain_below, batch_size=batch_size)
    preds = predict_files(run, inputs, out, reporter=_reporter(quiet), options=options, shard=shard)
    if preds and all(p.error for p in preds):
        from ..errors import DataError

        raise DataError(f"None of the {len(preds)} input file(s) could be predicted (first: {preds[0].path}: {preds[0].error}); "
                        f"each is listed with its error in {out}.", "pass readable image files (PNG, JPEG, DICOM, ...).")
    counts = Counter(p.label for p in preds if p.label)
    abstained = sum(p.abstain_reason == "low_confidence" for p in preds)
    foreign = sum(p.in_distribution is False for p in preds)
    typer.echo(f"{len(preds)} image(s): " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
               + (f" ({abstained} under the abstain threshold)" if abstained else "")
               + (f" ({foreign} unlike the training images: out of distribution)" if foreign else "") + f"; written to {out}")
    if patient_pattern:
        patients = aggregate_patients(preds, patient_pattern, patient_agg)
        classes = list(next(p for p in preds if p.probabilities).probabilities) if patients else []
        write_patients_csv(target, patients, classes)
        typer.echo(f"{len(patients)} patient(s) ({patient_agg} of image probabilities) written to {target}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    int8: bool = typer.Option(False, "--int8", help="Also write an int8 model (about 2x faster on CPU), kept only if its "
                                                    "validation accuracy is within --max-int8-drop of the float model's."),
    max_int8_drop: float = typer.Option(0.01, "--max-int8-drop", help="Validation accuracy the int8 model may lose (0.01 = 1 point)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Export a run's model (ONNX, dynamic batch) into the run, after a parity check on real images."""
    from ..errors import ConfigError
    from ..inference.export import export_onnx

    if format.lower() != "onnx":
        raise ConfigError(f"Unknown export format {format!r}.", "use --format onnx.")
    if not 0 <= max_int8_drop <= 1:
        raise ConfigError(f"--max-int8-drop must be between 0 and 1 (got {max_int8_drop}).", "pass e.g. --max-int8-drop 0.01.")
    reporter = _reporter(quiet)
    meta = export_onnx(run, reporter=reporter)
    typer.echo(f"{Path(run) / meta['file']} written (opset {meta['opset']}); parity on {meta['parity']['images']} images: "
               f"max |p_onnx - p_torch| = {meta['parity']['max_abs_probability_diff']:.1e}")
    if int8:
        from ..inference.quantize import quantize_int8

        q = quantize_int8(run, reporter=reporter, max_drop=max_int8_drop)
        c = q["check"]
        typer.echo(f"{Path(run) / q['file']} written; {c['split']} accuracy {100 * c['accuracy_float']:.1f}% float, "
                   f"{100 * c['accuracy_int8']:.1f}% int8 ({c['images']} images, {100 * c['agreement']:.1f}% same class); "
                   f"use it with --backend onnx-int8")


@app.command("train-cascade")
def train_cascade_cmd(
    cascade: Path = typer.Argument(..., help="Cascade YAML (stages, routes, data spec)."),
    stage: Optional[List[str]] = typer.Option(None, "--stage", help="Train only this stage (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain stages whose run already exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train every stage of a cascade on its slice of one combined dataset spec."""
    from ..cascade import train_cascade

    runs = train_cascade(cascade, reporter=_reporter(quiet), overwrite=overwrite, only=stage)
    for name, path in runs.items():
        typer.echo(f"stage {name}: {path}")


@app.command("evaluate-cascade")
def evaluate_cascade_cmd(
    cascade: Path = typer.Argument(..., help="Cascade YAML."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled folder or dataset spec with the final labels (default: the cascade's data)."),
    split: str = typer.Option("test", help="Split to evaluate on."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """End-to-end accuracy and confusion matrix of a cascade over its final labels."""
    from ..evaluation.tables import metrics_table
    from ..cascade import cascade_metrics_path, cascade_summary, evaluate_cascade, save_cascade_metrics

    cascade_metrics_path(cascade)  # checked before the evaluation, not after
    metrics = evaluate_cascade(cascade, data=data, split=split, reporter=_reporter(quiet))
    _print(*metrics_table(metrics, f"cascade on {metrics['split']} ({metrics['n']} images)"))
    typer.echo(cascade_summary(metrics))
    typer.echo(f"Metrics saved to {save_cascade_metrics(cascade, metrics)}")
