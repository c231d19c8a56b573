"""The Predictor: one loaded run answering for files or pixel arrays, with exactly the training
preprocessing. Every entry point (predict command, Python API, cascades, the server) goes through it.

Backends: ONNX Runtime when the run holds an up-to-date model.onnx (see inference/export.py) and
onnxruntime is installed, PyTorch otherwise; the int8 model (inference/quantize.py) only when asked
for (`onnx-int8`). Weights are read from safetensors (no pickle)."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import torch

from ..config import Backend, PredictOptions, predict_default
from ..data.images import UnreadableImage, array_for_model, load_for_model
from ..data.listing import list_image_files
from ..data.sources import compile_patient_pattern, patient_from_match
from ..engine import Net, forward, forward_features
from ..errors import ConfigError, DataError, RunError
from ..io import check_output_file, write_csv
from ..ood import load_guard
from ..reporting import Reporter
from ..run import Run, load_run
from . import exported
from .exported import INT8_FILE

# A prediction whose top probability is under this is flagged `abstain`: config.PredictOptions holds the defaults.
DEFAULT_ABSTAIN_BELOW = predict_default("abstain_below")
BACKENDS = tuple(Backend.__args__)


@dataclass
class Prediction:
    path: str | None
    label: str | None
    probabilities: dict[str, float]
    error: str | None = None
    abstain: bool = False
    # The out-of-distribution guard (medclassify/ood): None when the run has none.
    ood_score: float | None = None
    in_distribution: bool | None = None
    abstain_reason: str | None = None  # "out_of_distribution" or "low_confidence"

    @property
    def confidence(self) -> float:
        return max(self.probabilities.values()) if self.probabilities else 0.0


def weights_hash(run_path: Path) -> str:
    """Version of a run's model: the first 12 hex digits of the SHA-256 of model.safetensors."""
    h = hashlib.sha256()
    with open(run_path / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def onnx_is_current(run: Run, version: str) -> bool:
    """model.onnx passed its parity check against the weights now in the run, and is unchanged since."""
    return exported.onnx_is_current(run.path, version)


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class Predictor:
    def __init__(self, run: Run | str | Path, batch_size: int = predict_default("batch_size"),
                 backend: Backend = predict_default("backend"),
                 abstain_below: float | None = DEFAULT_ABSTAIN_BELOW, tta: bool | None = None, threads: int | None = None,
                 use_operating_point: bool = True, onnx_file: Path | None = None, options: PredictOptions | None = None):
        """`options`, when given, replaces backend, TTA, abstain threshold, threads and batch size.
        `onnx_file`: run this ONNX file whatever export.json says (export and quantize check a new
        model from its temporary name before they commit it)."""
        if options is not None:
            batch_size, backend, abstain_below = options.batch_size, options.backend, options.abstain_below
            tta, threads = options.tta, options.threads
        self.run = run if isinstance(run, Run) else load_run(run)
        self.prep = self.run.preprocessing
        self.classes = self.run.classes
        self.batch_size = batch_size
        self.abstain_below = abstain_below
        # None: what the run chose on its validation split (run.json "tta", set by train, or by
        # evaluate for older runs), so predictions match the reported metrics.
        self.tta = self.run.tta if tta is None else tta
        self.temperature = self.run.temperature
        # `evaluate --target-sensitivity/--target-specificity` stores a threshold chosen on validation;
        # every entry point (predict, serve, cascade) then decides with it instead of argmax.
        op = self.run.info.get("operating_point") if len(self.classes) == 2 else None
        self.operating_point = op if use_operating_point and op and op.get("positive_class") in self.classes else None
        if not (self.run.path / "model.safetensors").is_file():
            raise RunError(f"Run {self.run.path} has no model.safetensors.", "the run is incomplete: train it again.")
        self.version = weights_hash(self.run.path)
        if backend not in BACKENDS:
            raise ConfigError(f"Unknown backend {backend!r}.", f"use one of: {', '.join(BACKENDS)}.")
        current = onnx_file is not None or onnx_is_current(self.run, self.version)
        if backend == "onnx" and not current:
            raise ConfigError(f"Run {self.run.path} has no verified, up-to-date model.onnx (export.json must hold a passed "
                              "parity check of this very file and of the run's weights).",
                              f"export it first: medclassify export {self.run.path} --format onnx.")
        if backend == "onnx-int8":
            if not exported.int8_is_current(self.run.path, self.version):
                raise ConfigError(f"Run {self.run.path} has no up-to-date {INT8_FILE}.",
                                  f"quantise it first: medclassify export {self.run.path} --format onnx --int8.")
        use_onnx = backend in ("onnx", "onnx-int8") or (backend == "auto" and current and _onnxruntime_available())
        self.backend = backend if backend == "onnx-int8" else "onnx" if use_onnx else "torch"
        self._model: torch.nn.Module | None = None
        self.session = None
        self.fallback: str | None = None  # why the auto backend fell back to PyTorch (a damaged model.onnx)
        if use_onnx:
            try:
                self.session = _ort_session(onnx_file or self.run.path / (INT8_FILE if backend == "onnx-int8" else "model.onnx"), threads)
            except RunError as e:
                if backend != "auto":
                    raise
                self.fallback, use_onnx, self.backend = f"{e.message} Using PyTorch instead.", False, "torch"
                logging.getLogger("medclassify").warning(self.fallback)
        self.guard, self.guard_reason = load_guard(self.run)
        if self.guard is not None and use_onnx and not self._onnx_fits_guard():
            # An ONNX file exported before the guard (no features output), or before its layers (the
            # penultimate features alone): auto keeps the guard on PyTorch.
            old = (f"{self.run.path / 'model.onnx'} has no features output (exported before the out-of-distribution guard)"
                   if len(self.session.get_outputs()) < 2 else
                   f"{self.run.path / 'model.onnx'} returns other features than the out-of-distribution guard reads "
                   "(exported before its layers)")
            if backend == "auto":
                self.fallback, use_onnx, self.backend, self.session = f"{old}: using PyTorch; export it again.", False, "torch", None
                logging.getLogger("medclassify").warning(self.fallback)
            else:
                self.guard, self.guard_reason = None, f"{old}: export it again"
        if not use_onnx:
            self._model = self.run.build_model().to(memory_format=torch.channels_last)
        self.net = Net(session=self.session) if use_onnx else Net(self._model)

    def _onnx_fits_guard(self) -> bool:
        outputs = self.session.get_outputs()
        if len(outputs) < 2:
            return False
        width = outputs[1].shape[-1] if outputs[1].shape else None
        return not isinstance(width, int) or self.guard.accepts(width)  # a symbolic width is checked when scored

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch model (built on first use under the ONNX backend: explanations need gradients)."""
        if self._model is None:
            self._model = self.run.build_model().to(memory_format=torch.channels_last)
        return self._model

    def describe(self) -> dict:
        return {"run": str(self.run.path), "classes": self.classes, "model": self.run.model_name,
                "version": self.version, "backend": self.backend, "temperature": self.temperature,
                "abstain_below": self.abstain_below, "tta": self.tta, "operating_point": self.operating_point,
                "ood": self.guard_info(), "preprocessing": self.prep.model_dump()}

    def guard_info(self) -> dict:
        if self.guard is None:
            return {"enabled": False, "reason": self.guard_reason}
        return {"enabled": True, "method": self.guard.detector.method, "threshold": self.guard.threshold,
                "quantile": self.guard.info.get("quantile"),
                "layers": [layer["name"] for layer in self.guard.info.get("layers", [])] or ["penultimate"]}

    def load(self, path: str | Path, data: bytes | None = None) -> np.ndarray:
        """File (or its bytes, named by `path`) -> (H, W, C) uint8, exactly as the training cache decodes it."""
        return load_for_model(path, self.prep.image_size, self.prep.resize, self.prep.channels, data)

    def tensor(self, batch: np.ndarray) -> torch.Tensor:
        """(N, H, W, C) uint8 -> the model's input tensor (the evaluation path's `prep(...)`)."""
        return self.prep(batch)

    def logits(self, x: torch.Tensor) -> np.ndarray:
        return self.net.logits(x).numpy()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 already preprocessed -> (N, K) probabilities: the one forward pass
        (engine.py) with the run's TTA choice and temperature, as in evaluation."""
        return forward(self.net, self.tensor(batch), self.tta, self.temperature)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, out-of-distribution scores or None without a guard) of a preprocessed batch."""
        if self.guard is None:
            return self.probabilities(batch), None
        p, _, f = forward_features(self.net, self.tensor(batch), self.tta, self.temperature)
        return p, self.guard.score(f)

    def predict_decoded(self, arr: np.ndarray, path: str | None = None) -> Prediction:
        """One (H, W, C) uint8 image already at the run's size."""
        p, s = self.outputs(arr[None])
        return self.wrap(path, p[0], None if s is None else float(s[0]))

    def predict_array(self, pixels: np.ndarray, path: str | None = None) -> Prediction:
        return self.predict_decoded(array_for_model(pixels, self.prep.image_size, self.prep.resize, self.prep.channels), path)

    def predict_file(self, path: str | Path, data: bytes | None = None) -> Prediction:
        """One file (or its bytes, named by `path`); raises UnreadableImage with the reason."""
        return self.predict_decoded(self.load(path, data), str(path))

    def wrap(self, path: str | None, p: np.ndarray, ood_score: float | None = None) -> Prediction:
        top = int(p.argmax())
        if self.operating_point:
            pos = self.classes.index(self.operating_point["positive_class"])
            top = pos if p[pos] >= self.operating_point["threshold"] else 1 - pos
        unsure = self.abstain_below is not None and float(p[top]) < self.abstain_below
        ood_score = None if ood_score is None else float(ood_score)
        inside = None if ood_score is None or self.guard is None else bool(ood_score <= self.guard.threshold)
        reason = "out_of_distribution" if inside is False else "low_confidence" if unsure else None
        return Prediction(path, self.classes[top], {c: float(v) for c, v in zip(self.classes, p)}, abstain=reason is not None,
                          ood_score=ood_score, in_distribution=inside, abstain_reason=reason)

    def predict_paths(self, paths: Sequence[str], on_batch: Callable[[int], None] | None = None,
                      threads: int | None = None) -> list[Prediction]:
        """Decode in a thread pool (Pillow and the resize release the GIL) while earlier batches are
        being classified; a bounded number of batches is in flight, so memory stays flat."""
        out: list[Prediction] = []
        threads = threads or min(8, 2 * (os.cpu_count() or 1))

        def load(p):
            try:
                return p, self.load(p), None
            except UnreadableImage as e:
                return p, None, e.reason
            except Exception as e:  # one bad file never stops a batch job
                return p, None, f"{type(e).__name__}: {e}"

        chunks = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        with ThreadPoolExecutor(threads) as pool:
            pending: deque = deque()
            for chunk in chunks[:3]:
                pending.append([pool.submit(load, p) for p in chunk])
            next_chunk = 3
            while pending:
                futures = pending.popleft()
                if next_chunk < len(chunks):
                    pending.append([pool.submit(load, p) for p in chunks[next_chunk]])
                    next_chunk += 1
                done = [f.result() for f in futures]
                good = [(p, a) for p, a, e in done if e is None]
                probs, scores = self.outputs(np.stack([a for _, a in good])) if good else (np.zeros((0, len(self.classes))), None)
                it = iter(zip(probs, scores if scores is not None else [None] * len(probs)))
                for p, a, e in done:
                    out.append(Prediction(p, None, {}, e) if e else self.wrap(p, *next(it)))
                if on_batch:
                    on_batch(len(done))
        return out


def _ort_session(path: Path, threads: int | None):
    """An ONNX Runtime session, or a RunError naming the file when it cannot be loaded."""
    try:
        return _open_session(path, threads)
    except Exception as e:  # onnxruntime's own classes (InvalidProtobuf, Fail, ...) share no base but Exception
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise RunError(f"{path} cannot be loaded by ONNX Runtime ({first[:160]}).",
                       f"export it again: medclassify export {path.parent} --format onnx.") from None


def _open_session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if opts.intra_op_num_threads > 1:
        # A multi-threaded session's pool spins after each run by default and then fights PyTorch's
        # threads (the preprocessing) for the cores: on 2 cores, single-image p99 was 65 ms with
        # spinning, 13 without. Single-threaded sessions (the server's workers) keep the default:
        # turning it off there halved the server's throughput (317 -> 160 requests/s).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def collect_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Folders (searched recursively), image files, and CSV/TXT files listing paths."""
    paths: list[str] = []
    inputs = list(inputs)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            try:
                files, skipped = list_image_files(p)
            except OSError as e:
                raise DataError(f"Cannot list input folder {p}: {e.strerror or e}.", "make it readable (chmod -R u+rX).") from None
            # Dangling links, link loops and unreadable folders stay in the list: decoding them gives
            # each its true reason in the predictions CSV, so none is silently dropped.
            paths += sorted(files + list(skipped))
        elif p.is_file() and p.suffix.lower() in (".csv", ".txt"):
            paths += _list_file(p)
        elif p.is_file() or p.is_symlink():  # a dangling link or a loop gets its reason in the CSV
            paths.append(str(p))
        else:
            raise DataError(f"Input {p} does not exist.", "pass image files, folders of images or a CSV with a path column.")
    if not paths:
        raise DataError(f"No images found in {', '.join(map(str, inputs))}.", "pass image files or folders that contain images.")
    return paths


def _list_file(p: Path) -> list[str]:
    try:
        names = _read_list(p)
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text (byte {e.start}); it cannot be read as a list of image paths.",
                        "save the list as UTF-8 (CSV with a path column, or one path per line), or pass the images themselves.") from None
    except csv.Error as e:
        raise DataError(f"{p} is not a readable CSV ({e}).", "save the list as a CSV with a path column, or one path per line.") from None
    except OSError as e:
        raise DataError(f"Cannot read {p} ({e.strerror or e}).", "check the file's permissions.") from None
    return [str(x if Path(x).is_absolute() else p.parent / x) for x in (Path(n) for n in names if n)]


def _read_list(p: Path) -> list[str]:
    with open(p, newline="", encoding="utf-8-sig") as f:
        if p.suffix.lower() == ".txt":
            return [line.strip() for line in f if line.strip()]
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "path" not in cols:
            raise DataError(f"{p} has no 'path' column.", "add a header row with a path column.")
        return [(row.get(cols["path"]) or "").strip() for row in reader]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4): the second of four parts (1-based)."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"Cannot read --shard {text!r}.", "write it as i/n, e.g. 1/4 for the first of four parts.") from None
    if n < 1 or not 1 <= i <= n:
        raise ConfigError(f"--shard {text}: i must be between 1 and n.", "write e.g. 1/4 ... 4/4.")
    return i, n


def take_shard(paths: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """Contiguous part i of n of the sorted, de-duplicated path list: the same on every machine."""
    if shard is None:
        return list(dict.fromkeys(paths))
    paths = sorted(set(paths))
    i, n = shard
    lo, hi = (i - 1) * len(paths) // n, i * len(paths) // n
    return paths[lo:hi]


def predict_files(run: Run | str | Path, inputs: Iterable[str | Path] | str | Path, out: str | Path | None = None,
                  reporter: Reporter | None = None, *, options: PredictOptions | None = None,
                  shard: str | tuple[int, int] | None = None) -> list[Prediction]:
    """Predict every image in `inputs` with `options` (backend, TTA, abstain threshold, threads,
    batch size); write a CSV (path, predicted, prob_<class>..., abstain, error) to `out`."""
    reporter = reporter or Reporter(quiet=True)
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    inputs = list(inputs)
    if out is not None:
        check_output_inputs(out, run.path if isinstance(run, Run) else run, inputs)
    predictor = Predictor(run, options=options or PredictOptions())
    paths = take_shard(collect_inputs(inputs), shard)  # after the run loads: a missing run is the first error
    if out is not None:
        check_output_inputs(out, predictor.run.path, inputs, paths)
    if shard:
        reporter.info(f"Shard {shard[0]}/{shard[1]}: {len(paths)} image(s).")
    if predictor.fallback:
        reporter.warn(predictor.fallback)
    with reporter.task(f"Predicting ({predictor.backend})", len(paths)) as bar:
        preds = predictor.predict_paths(paths, on_batch=bar.advance)
    failed = [p for p in preds if p.error]
    if failed:
        reporter.warn(f"{len(failed)} of {len(preds)} file(s) could not be read (first: {failed[0].path}: {failed[0].error}); "
                      "they are listed with the error in the CSV.")
    if out is not None:
        write_predictions_csv(out, preds, predictor.classes)
    return preds


def check_output_inputs(out: str | Path, run_path: str | Path, inputs: Iterable[str | Path],
                        paths: Iterable[str] = ()) -> Path:
    """Before any work: `out` is a file that may be written, not one of the inputs (images or a list
    file), not inside the run, and not inside a folder being predicted."""
    inputs = [Path(p) for p in inputs]
    folders = [p for p in inputs if p.is_dir()]
    return check_output_file(out, inputs=[*(p for p in inputs if not p.is_dir()), *paths],
                             protected_dirs=[run_path, *folders])


def write_predictions_csv(out: str | Path, preds: list[Prediction], classes: list[str]) -> None:
    """One row per image; ood_score and in_distribution are empty when the run has no guard."""
    write_csv(out, ["path", "predicted", *[f"prob_{c}" for c in classes], "abstain", "abstain_reason", "ood_score",
                    "in_distribution", "error"],
                ([p.path, p.label or "", *[f"{p.probabilities[c]:.6f}" if p.probabilities else "" for c in classes],
                  ("yes" if p.abstain else "no") if p.probabilities else "", p.abstain_reason or "",
                  "" if p.ood_score is None else f"{p.ood_score:.6g}",
                  "" if p.in_distribution is None else ("yes" if p.in_distribution else "no"), p.error or ""] for p in preds))


@dataclass
class PatientPrediction:
    patient: str
    images: int
    label: str
    probabilities: dict[str, float]


def aggregate_patients(preds: Sequence[Prediction], pattern: str, how: Literal["mean", "max"] = "mean") -> list[PatientPrediction]:
    """Per-patient probabilities: the mean (or max) over the patient's readable images. The patient id
    is read from each file name (then the full path) with the same patterns training uses."""
    if how not in ("mean", "max"):
        raise ConfigError(f"Unknown patient aggregation {how!r}.", "use mean or max.")
    rx = compile_patient_pattern(pattern)
    groups: dict[str, list[Prediction]] = {}
    for p in preds:
        if not p.probabilities:
            continue
        m = rx.search(Path(p.path).name) or rx.search(p.path)
        pid = patient_from_match(m)
        if pid is not None:
            groups.setdefault(pid, []).append(p)
    out = []
    for pid in sorted(groups):
        classes = list(groups[pid][0].probabilities)
        mat = np.array([[q.probabilities[c] for c in classes] for q in groups[pid]])
        agg = mat.mean(0) if how == "mean" else mat.max(0)
        out.append(PatientPrediction(pid, len(mat), classes[int(agg.argmax())], dict(zip(classes, agg.tolist()))))
    return out


def write_patients_csv(out: str | Path, patients: list[PatientPrediction], classes: list[str]) -> None:
    write_csv(out, ["patient", "images", "predicted", *[f"prob_{c}" for c in classes]],
                ([p.patient, p.images, p.label, *[f"{p.probabilities[c]:.6f}" for c in classes]] for p in patients))
