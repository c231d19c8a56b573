"""Static int8 quantisation of a run's exported ONNX model, with its accuracy measured before it is kept.

ONNX Runtime's static quantisation (per-channel int8 weights, uint8 activations, ranges calibrated
on the run's own training images) runs EfficientNet-Lite about 2x faster on a CPU with VNNI. It
changes answers, though, so it is opt-in: the file (model.int8.onnx) is written only when its
accuracy on the run's validation images is within `max_drop` of the float model's, the measured
figures go into export.json["int8"], and nothing chooses it unless asked (`--backend onnx-int8`)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import ConfigError, RunError
from ..io import atomic_path, check_output_file
from ..reporting import Reporter
from ..run import Run, load_run
from .exported import INT8_FILE, META_FILE, ONNX_FILE, file_sha256, read_export_meta
from .predictor import Predictor, onnx_is_current, weights_hash

CALIBRATION_IMAGES = 256
CHECK_IMAGES = 1024
DEFAULT_MAX_DROP = 0.01  # validation accuracy (absolute) the int8 model may lose against float


def _sample(paths: list[str], n: int, seed: int = 0) -> list[str]:
    if len(paths) <= n:
        return paths
    idx = np.random.default_rng(seed).choice(len(paths), n, replace=False)
    return [paths[i] for i in sorted(idx)]


def _existing(run: Run, split: str) -> list[tuple[str, int]]:
    return [(r.path, run.classes.index(r.label)) for r in run.records(split)
            if r.label in run.classes and Path(r.path).is_file()]


def quantize_int8(run: Run | str | Path, reporter: Reporter | None = None, max_drop: float = DEFAULT_MAX_DROP,
                  calibration: int = CALIBRATION_IMAGES, check: int = CHECK_IMAGES) -> dict:
    """Write model.int8.onnx next to an up-to-date model.onnx; returns the int8 section of export.json."""

    ort = _quantizer()
    reporter = reporter or Reporter(quiet=True)
    run = run if isinstance(run, Run) else load_run(run)
    version = _check_ready(run)
    cal_paths, check_split, checked = _pick_images(run, calibration, check)
    float_pred = Predictor(run, backend="onnx")
    cal = float_pred.tensor(np.stack([float_pred.load(p) for p in cal_paths])).contiguous().numpy()
    reader = _batches(ort.CalibrationDataReader, cal, float_pred)
    with tempfile.TemporaryDirectory(prefix="medclassify-int8-") as work, atomic_path(run.path / INT8_FILE) as tmp:
        _quantize_static(ort, run.path / ONNX_FILE, tmp, Path(work), reader, reporter, len(cal_paths))
        section = _section(run, float_pred, tmp, version, len(cal_paths), checked, check_split, max_drop)
        _keep_or_refuse(run, section, max_drop)
    _report(reporter, section)
    return section


def _quantizer():
    """ONNX Runtime's quantisation API as a namespace, or the ConfigError that says how to install it."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ConfigError("int8 quantisation needs onnxruntime.", "pip install 'medclassify[export]'.") from None
    return SimpleNamespace(CalibrationDataReader=CalibrationDataReader, CalibrationMethod=CalibrationMethod,
                           QuantFormat=QuantFormat, QuantType=QuantType, quantize_static=quantize_static,
                           quant_pre_process=quant_pre_process)


def _check_ready(run: Run) -> str:
    """The weights version whose model.onnx is quantised; refuses before any work if it is stale or an output is in the way."""
    for name in (INT8_FILE, META_FILE):
        check_output_file(run.path / name, what="export")
    version = weights_hash(run.path)
    if not onnx_is_current(run, version):
        raise RunError(f"Run {run.path} has no up-to-date model.onnx to quantise.",
                       f"export it first: medclassify export {run.path} --format onnx.")
    return version


def _pick_images(run: Run, calibration: int, check: int) -> tuple[list[str], str, list[tuple[str, int]]]:
    """Calibration images from the training split; checked images (path, class index) from val, else test."""
    cal_paths = _sample([p for p, _ in _existing(run, "train")], calibration)
    check_split = "val" if _existing(run, "val") else "test"
    checked = _existing(run, check_split)
    if not cal_paths or not checked:
        raise RunError(f"Run {run.path} lists no training or validation image that still exists.",
                       "restore the dataset the run was trained on; int8 ranges and accuracy are measured on it.")
    checked = [checked[i] for i in sorted(np.random.default_rng(1).permutation(len(checked))[:check])]
    return cal_paths, check_split, checked


def _batches(reader_base: type, cal: np.ndarray, float_pred: Predictor):
    class Batches(reader_base):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(cal):
                return None
            self.start += 32
            return {float_pred.net.input_name: cal[self.start - 32 : self.start]}

    return Batches()


def _quantize_static(ort, source: Path, out: Path, work: Path, reader, reporter: Reporter, n_cal: int) -> None:
    quiet = logging.getLogger().level
    try:
        logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs a warning per shape tensor it skips
        reporter.info(f"Calibrating int8 ranges on {n_cal} training images ...")
        pre = work / "model.pre.onnx"
        ort.quant_pre_process(str(source), str(pre))
        ort.quantize_static(str(pre), str(out), reader, quant_format=ort.QuantFormat.QOperator, per_channel=True,
                            activation_type=ort.QuantType.QUInt8, weight_type=ort.QuantType.QInt8,
                            calibrate_method=ort.CalibrationMethod.MinMax)
    finally:
        logging.getLogger().setLevel(quiet)


def _section(run: Run, float_pred: Predictor, int8_file: Path, version: str, n_cal: int,
             checked: list[tuple[str, int]], check_split: str, max_drop: float) -> dict:
    """export.json's int8 section: the file, and both models' answers on the checked images."""
    images = np.stack([float_pred.load(p) for p, _ in checked])
    labels = np.array([y for _, y in checked])
    p_float, s_float = float_pred.outputs(images)
    p_int8, s_int8 = Predictor(run, backend="onnx", onnx_file=int8_file).outputs(images)
    acc_float = float((p_float.argmax(1) == labels).mean())
    acc_int8 = float((p_int8.argmax(1) == labels).mean())
    ood = {}
    if s_float is not None and s_int8 is not None:
        # The guard's threshold was fitted on float features; these images are the kind it passes
        # (about its quantile of them), so a drift of the int8 features shows as more of them flagged.
        t = float_pred.guard.threshold
        ood = {"ood": {"threshold": t, "flagged_float": float((s_float > t).mean()), "flagged_int8": float((s_int8 > t).mean()),
                       "flag_agreement": float(((s_float > t) == (s_int8 > t)).mean()),
                       "median_rel_score_diff": float(np.median(np.abs(s_int8 - s_float)) / max(abs(t), 1e-12))}}
    return {
        "file": INT8_FILE, "weights_version": version, "sha256": file_sha256(int8_file),
        "format": "QOperator, per-channel int8 weights, uint8 activations",
        "calibration_images": n_cal, "calibration_split": "train",
        "check": {"status": "passed", "split": check_split, "images": len(checked),
                  "accuracy_float": acc_float, "accuracy_int8": acc_int8,
                  "agreement": float((p_float.argmax(1) == p_int8.argmax(1)).mean()),
                  "max_abs_probability_diff": float(np.abs(p_float - p_int8).max()),
                  "mean_abs_probability_diff": float(np.abs(p_float - p_int8).mean()), "max_drop": max_drop, **ood},
        "bytes": int8_file.stat().st_size,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _keep_or_refuse(run: Run, section: dict, max_drop: float) -> None:
    """Records the section in export.json when the accuracy drop is within max_drop; otherwise raises,
    so the atomic write of the int8 file is abandoned."""
    c = section["check"]
    acc_float, acc_int8, check_split = c["accuracy_float"], c["accuracy_int8"], c["split"]
    if acc_float - acc_int8 > max_drop:
        raise RunError(f"int8 quantisation of {run.path} loses {100 * (acc_float - acc_int8):.1f} points of "
                       f"{check_split} accuracy ({100 * acc_float:.1f}% -> {100 * acc_int8:.1f}%, limit "
                       f"{100 * max_drop:.1f}); the new {INT8_FILE} was not kept.",
                       "serve the float model (the default), or accept the loss with --max-int8-drop.")
    meta = read_export_meta(run.path)
    meta["int8"] = section
    with atomic_path(run.path / META_FILE) as meta_tmp:  # renamed before the model: see exported.py
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _report(reporter: Reporter, section: dict) -> None:
    c = section["check"]
    reporter.info(f"int8 model written ({section['bytes'] / 1e6:.1f} MB); on {c['images']} {c['split']} images: accuracy "
                  f"{100 * c['accuracy_float']:.1f}% float vs {100 * c['accuracy_int8']:.1f}% int8, "
                  f"{100 * c['agreement']:.1f}% same class." + (
                      f" Out-of-distribution guard (float threshold): {100 * c['ood']['flagged_float']:.1f}% flagged float vs "
                      f"{100 * c['ood']['flagged_int8']:.1f}% int8, {100 * c['ood']['flag_agreement']:.1f}% same decision."
                      if "ood" in c else ""))
