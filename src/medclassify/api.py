"""The Python API: `import medclassify` and call train, evaluate, predict, audit, compare, load_run.

`train`'s keywords are generated from TrainConfig's fields (names, types, defaults, descriptions),
so the API cannot drift from the CLI or the config file: `inspect.signature(medclassify.train)` and
a notebook's completion and Shift-Tab help show every setting with its default."""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import inspect
import sys
from pathlib import Path
from typing import Iterable, Literal, get_args, get_origin

import numpy as np

from .config import PredictOptions, TrainConfig, predict_default
from .errors import ConfigError
from .results import AuditReport, Comparison, ExplanationResult, Metrics, Predictions, TrainResult
from .run import Run
from .run import load_run as _load_run

# Keywords of train() that are not TrainConfig fields.
_TRAIN_EXTRAS = {"overwrite": (bool, False, "replace an existing run folder at `out`."),
                 "resume": (bool, False, "continue an interrupted training of the same settings."),
                 "quiet": (bool, False, "print nothing (no progress bars)."),
                 "config": (TrainConfig | None, None, "a ready TrainConfig; keywords given beside it override its values.")}


class UnknownOptionError(ConfigError, TypeError):
    """A keyword that is not a setting; a TypeError too, as Python raises for unexpected keywords."""


def _reporter(quiet: bool):
    import importlib.util

    from rich.console import Console

    from .reporting import Reporter

    if quiet:
        return Reporter(quiet=True)
    console = Console(stderr=True, highlight=False)
    if console.is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        # rich's live progress bars need ipywidgets in Jupyter (it warns at every bar without them):
        # print the messages as plain cell output instead.
        console = Console(file=sys.stdout, highlight=False, force_jupyter=False, force_terminal=False)
    return Reporter(console=console)


def _config_fields() -> dict:
    return {k: f for k, f in TrainConfig.model_fields.items() if k not in ("data", "out")}


def check_keywords(given: Iterable[str], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for key in given:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            fix = f"did you mean {near[0]}?" if near else f"use one of: {', '.join(valid)}."
            raise UnknownOptionError(f"{where}() got an unknown keyword {key!r}.", fix)


def checked_keywords(fn):
    """A misspelled keyword raises UnknownOptionError naming the nearest one (Python's own TypeError
    does not suggest)."""
    names = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not takes_any:
            check_keywords(kwargs, names, fn.__name__)
        return fn(*args, **kwargs)

    return wrapper


def as_method(fn):
    """The signature and help of a module function `fn(run, ...)` for the RunHandle method that
    passes itself as `run`."""
    def decorate(method):
        params = list(inspect.signature(fn).parameters.values())
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        method.__signature__ = inspect.signature(fn).replace(parameters=[self_param, *params[1:]])
        method.__doc__ = fn.__doc__
        return method

    return decorate


def default_out(data: str | Path) -> Path:
    """runs/<data folder name>-<UTC timestamp>, a fresh folder under the working directory."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = Path(str(data)).resolve().name or "run"
    out = Path("runs") / f"{Path(name).stem}-{stamp}"
    k = 1
    while out.exists():
        k += 1
        out = Path("runs") / f"{Path(name).stem}-{stamp}-{k}"
    return out


def train(data, out=None, **settings) -> TrainResult:
    valid = list(_config_fields()) + list(_TRAIN_EXTRAS)
    check_keywords(settings, valid, "train")
    extras = {k: settings.pop(k, default) for k, (_, default, _) in _TRAIN_EXTRAS.items()}
    base = extras["config"].model_dump() if extras["config"] is not None else {}
    if out is None:
        out = base.get("out") or default_out(data)
    config = _validated(TrainConfig, {**base, **settings, "data": str(data), "out": str(out)}, "train")
    from .training.fit import train as fit

    result = fit(config, reporter=_reporter(extras["quiet"]), overwrite=extras["overwrite"], resume=extras["resume"])
    run = load_run(result.run_dir)
    return TrainResult(run_dir=Path(result.run_dir), best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                       val_metrics=Metrics(result.val_metrics or {}), train_seconds=result.train_seconds, run=run)


def _validated(schema, values: dict, verb: str):
    from pydantic import ValidationError

    try:
        return schema(**values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"Invalid {key}={err.get('input')!r}: {err['msg']}.",
                          f"see help(medclassify.{verb}) for the accepted values.") from None


def _type_text(annotation) -> str:
    """int, float | None, or the choices of a Literal: 'pad' | 'squash'."""
    if get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _train_signature_and_doc() -> tuple[inspect.Signature, str]:
    P = inspect.Parameter
    params = [P("data", P.POSITIONAL_OR_KEYWORD, annotation="str | Path"),
              P("out", P.POSITIONAL_OR_KEYWORD, default=None, annotation="str | Path | None")]
    lines = ["Train a classifier on a labelled image folder (or CSV, or .npz) and write a run folder.",
             "",
             "Same settings, defaults and checks as `medclassify train` on the command line. An explicit",
             "`epochs` runs exactly that many epochs (no time budget unless `time_budget` is given too).",
             "A keyword that is not a setting raises UnknownOptionError naming the nearest one.",
             "",
             "Parameters",
             "----------",
             "data : str | Path",
             "    The labelled images: class-per-folder tree, labels CSV, MedMNIST .npz.",
             "out : str | Path | None",
             "    The run folder to write; default: a fresh runs/<data name>-<timestamp>."]
    for name, f in _config_fields().items():
        params.append(P(name, P.KEYWORD_ONLY, default=f.get_default(call_default_factory=True), annotation=f.annotation))
        lines.append(f"{name} : {_type_text(f.annotation)}, default {f.get_default(call_default_factory=True)!r}")
        if f.description:
            lines.append(f"    {f.description}")
    for name, (kind, default, text) in _TRAIN_EXTRAS.items():
        params.append(P(name, P.KEYWORD_ONLY, default=default, annotation=kind))
        lines += [f"{name} : {getattr(kind, '__name__', str(kind))}, default {default!r}", f"    {text}"]
    lines += ["", "Returns", "-------", "TrainResult",
              "    `.run` (the trained run: evaluate, predict, explain, report), `.history` (DataFrame),",
              "    `.val_metrics`, `.best_epoch`, `.epochs_run`; shown in a notebook with its training curves.",
              "", "Example", "-------",
              ">>> result = medclassify.train('data/chest_xray', 'runs/cxr', model='seed_cnn', epochs=2)"]
    return inspect.Signature(params, return_annotation=TrainResult), "\n".join(lines)


train.__signature__, train.__doc__ = _train_signature_and_doc()


class RunHandle(Run):
    """A trained run (what load_run and train(...).run give): classes, preprocessing, metrics, plus
    evaluate / predict / explain / report methods for notebooks."""

    @classmethod
    def of(cls, run: Run) -> "RunHandle":
        handle = object.__new__(cls)
        handle.__dict__.update(run.__dict__)
        return handle

    def __repr__(self) -> str:
        best = self.info.get("best_epoch")
        return (f"Run({str(self.path)!r}, {self.model_name}, {len(self.classes)} classes"
                f"{f', kept epoch {best}' if best else ''})")

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))

    def evaluate(self, split: str = "test", **kwargs) -> Metrics:
        return evaluate(self, split, **kwargs)

    def predict(self, inputs, out=None, **kwargs) -> Predictions:
        return predict(self, inputs, out, **kwargs)

    def explain(self, image, method: str = "gradcam", *, target: str | None = None, layer: str | None = None,
                out: str | Path | None = None, **options) -> ExplanationResult:
        """Explain the model's prediction for one image.

        image: a file path, or an (H, W) / (H, W, C) uint8 array already at the run's size and channels.
        method: gradcam | gradcam++ | lime | occlusion | activations.
        target: the class to explain (default: the predicted one). layer: the layer to explain at
        (default: the method's choice). out: also save the picture as this PNG.
        options: method settings (e.g. LIME's num_samples). Shown inline in a notebook."""
        return explain(self, image, method, target=target, layer=layer, out=out, **options)

    def report(self, split: str = "test", out: str | Path | None = None, *, n_wrong: int = 8,
               fresh: bool = False, quiet: bool = True) -> Path:
        """Write the run's HTML report (default RUN/report.html: metrics with intervals, figures,
        wrongly classified images) and return its path. fresh=True evaluates again."""
        from .reports.report import build_report

        return build_report(self, split=split, out=out, reporter=_reporter(quiet), n_wrong=n_wrong, fresh=fresh)


def load_run(path: str | Path) -> RunHandle:
    """Open a run folder written by train: `.classes`, `.preprocessing`, `.info` (run.json), and
    `.evaluate()`, `.predict()`, `.explain()`, `.report()`."""
    return path if isinstance(path, RunHandle) else RunHandle.of(path if isinstance(path, Run) else _load_run(path))


@checked_keywords
def evaluate(run: Run | str | Path, split: str = "test", *, data: str | Path | None = None,
             target_sensitivity: float | None = None, target_specificity: float | None = None,
             ordinal: bool = False, order: str | list[str] | None = None, n_boot: int = 1000, seed: int = 0,
             save: bool = True, quiet: bool = True) -> Metrics:
    """Metrics of a run on its `split` ("test", "val" or "train"), or on another labelled folder/CSV
    given as `data`, with 95% intervals; saved as RUN/metrics/<split>.json unless save=False.

    target_sensitivity / target_specificity: pick a decision threshold on validation (binary runs).
    ordinal / order: classes are ordered (adds quadratic-weighted kappa); order gives the order.
    n_boot, seed: bootstrap resamples for the AUC and F1 intervals.

    Returns Metrics: a dict (`m["accuracy"]`, `m["per_class"]`, ...) shown in a notebook as a table
    with the confusion matrix and ROC curves; `m.to_pandas()` gives the per-class table,
    `m.to_pandas("predictions")` one row per image."""
    from .evaluation.evaluate import evaluate as _evaluate

    return Metrics(_evaluate(run, split=split, data=data, reporter=_reporter(quiet), save=save,
                             target_sensitivity=target_sensitivity, target_specificity=target_specificity,
                             ordinal=ordinal, order=order, n_boot=n_boot, seed=seed))


@checked_keywords
def predict(run: Run | str | Path, inputs, out: str | Path | None = None, *, backend: str = predict_default("backend"),
            tta: bool | None = None, abstain_below: float | None = predict_default("abstain_below"),
            batch_size: int = predict_default("batch_size"),
            shard: str | None = None, quiet: bool = True) -> Predictions:
    """Predict image files: `inputs` is a file, a folder, a list file, or a list of them.

    out: also write a CSV (path, predicted, prob_<class>..., abstain, error).
    backend: auto | onnx | onnx-int8 | torch (auto: ONNX Runtime when the run was exported).
    tta: flip test-time augmentation (default: the run's choice). abstain_below: flag predictions
    whose top probability is under this (None: never). shard: "I/N" predicts the I-th of N parts.

    Returns Predictions: a list of Prediction (path, label, probabilities, abstain, error),
    shown as a table in a notebook; `.to_pandas()` gives one row per image."""
    from .inference.predictor import predict_files

    options = _validated(PredictOptions, dict(backend=backend, tta=tta, abstain_below=abstain_below, batch_size=batch_size),
                         "predict")
    preds = predict_files(run, inputs, out, _reporter(quiet), options=options, shard=shard)
    classes = run.classes if isinstance(run, Run) else _load_run(run).classes
    return Predictions(preds, classes)


def explain(run: Run | str | Path, image, method: str = "gradcam", *, target: str | None = None,
            layer: str | None = None, out: str | Path | None = None, **options) -> ExplanationResult:
    """Explain one image's prediction; see RunHandle.explain."""
    from .explain import get_method
    from .explain.batch import target_index
    from .explain.overlay import render_png
    from .inference.predictor import Predictor

    run = load_run(run)
    predictor = Predictor(run)
    source = None
    if isinstance(image, (str, Path)):
        source = str(image)
        pixels = predictor.load(source)
    else:
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if pixels.shape[-1] == 1 and run.preprocessing.channels == 3:
            pixels = np.repeat(pixels, 3, axis=-1)
    explainer = get_method(method)(predictor.model, predictor.prep, layer, **options)
    expl = explainer.explain(pixels, target_index(run, target))
    result = ExplanationResult(expl, run.classes, render_png(expl, run.classes, source=source, prep=predictor.prep), source)
    if out is not None:
        result.save(out)
    return result


@checked_keywords
def audit(data: str | Path, *, patient_pattern: str | None = None, splits: str | None = None,
          workers: int | None = None, out: str | Path | None = None, quiet: bool = True) -> AuditReport:
    """Audit a dataset before training: counts per class and split, exact and near duplicates,
    leakage across splits (images or patients), conflicting labels, unreadable files, sizes.

    patient_pattern: a regex whose first group is the patient id in a file name.
    splits: which top-level folder is which split, e.g. "train=Training,test=External".
    out: also write the audit folder (audit.json, audit.html, CSVs) there.
    Returns AuditReport: `.report` (dict), `.lines` (summary), `.to_pandas()` (counts)."""
    from .data.audit import audit_dataset, write_audit

    result = audit_dataset(data, patient_pattern=patient_pattern, reporter=None if quiet else _reporter(False),
                           workers=workers, splits=splits)
    if out is not None:
        write_audit(result, Path(out))
    return AuditReport(result)


@checked_keywords
def compare(runs: list[Run | str | Path], split: str = "test", *, out: str | Path | None = None,
            n_boot: int = 1000, seed: int = 0, quiet: bool = True) -> Comparison:
    """Compare two or more runs on the same labelled split: a leaderboard (balanced accuracy first)
    with intervals, McNemar and DeLong tests per pair, and the settings that differ.
    out: also write the comparison page (HTML) there. `.to_pandas()` gives the leaderboard."""
    from .evaluation.compare import compare_runs, write_compare_html

    result = compare_runs(list(runs), split=split, reporter=_reporter(quiet), n_boot=n_boot, seed=seed)
    if out is not None:
        write_compare_html(result, out)
    return Comparison(result)


def report(run: Run | str | Path, split: str = "test", out: str | Path | None = None, **kwargs) -> Path:
    """Write the run's HTML report and return its path; see RunHandle.report."""
    return load_run(run).report(split, out, **kwargs)


as_method(evaluate)(RunHandle.evaluate)
as_method(predict)(RunHandle.predict)

__all__ = ["train", "evaluate", "predict", "load_run", "audit", "compare", "explain", "report", "RunHandle",
           "UnknownOptionError", "check_keywords", "default_out"]
