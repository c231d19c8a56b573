"""Result objects of the Python API: a short text `repr` for the console, a `_repr_html_` (tables and
inline figures) for notebooks, and `.to_pandas()` for analysis. Metrics and comparisons stay dicts
and predictions a list, so code that indexed the old return values keeps working."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HEADLINE = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
            ("auc", "AUC"), ("qwk", "quadratic kappa"), ("ece", "calibration error (ECE)"))


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _interval(ci: Any) -> str:
    if not ci or len(ci) != 2 or ci[0] is None:
        return ""
    return f"[{_num(ci[0])}, {_num(ci[1])}]"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pandas():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - a declared dependency
        from .errors import ConfigError

        raise ConfigError("to_pandas() needs pandas.", "pip install 'pandas>=2.1,<3'.") from None
    return pd


class _Pretty:
    """IPython's plain-text display uses the short repr (not the dict/list pretty-printer)."""

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))


class Metrics(_Pretty, dict):
    """What `evaluate()` returns: the metrics dict saved as metrics/<split>.json, shown as a table with
    95% intervals, the confusion matrix and the ROC curves. `metrics["accuracy"]` works as before."""

    def __repr__(self) -> str:
        parts = []
        for key, label in HEADLINE[:4]:
            if self.get(key) is not None:
                ci = _interval(self.get("ci", {}).get(key))
                parts.append(f"{label} {_num(self[key])}{' ' + ci if ci else ''}")
        return f"Metrics({self.get('split', '?')}, n={self.get('n', '?')}: {', '.join(parts)})"

    def summary_rows(self) -> list[list[str]]:
        return [[label, _num(self[key]), _interval(self.get("ci", {}).get(key))]
                for key, label in HEADLINE if self.get(key) is not None]

    def to_pandas(self, table: str = "per_class"):
        """'per_class' (default): one row per class (precision, recall, f1, support, intervals);
        'summary': the headline metrics with their 95% intervals; 'predictions': one row per image."""
        pd = _pandas()
        if table == "summary":
            ci = self.get("ci", {})
            return pd.DataFrame([{"metric": key, "value": self[key], "ci_low": (ci.get(key) or [None, None])[0],
                                  "ci_high": (ci.get(key) or [None, None])[1]}
                                 for key, _ in HEADLINE if self.get(key) is not None]).set_index("metric")
        if table == "per_class":
            rows = []
            for name, m in self.get("per_class", {}).items():
                row = {"class": name, **{k: v for k, v in m.items() if not isinstance(v, dict)}}
                for k, (lo, hi) in (m.get("ci") or {}).items():
                    row[f"{k}_ci_low"], row[f"{k}_ci_high"] = lo, hi
                rows.append(row)
            return pd.DataFrame(rows).set_index("class")
        if table == "predictions":
            pr, classes = self["predictions"], self["classes"]
            probs = np.asarray(pr["probabilities"], dtype=float).reshape(len(pr["paths"]), len(classes))
            frame = pd.DataFrame({"path": pr["paths"], "label": [classes[i] for i in pr["labels"]],
                                  "predicted": [classes[i] for i in probs.argmax(1)] if len(probs) else []})
            for k, c in enumerate(classes):
                frame[f"prob_{c}"] = probs[:, k]
            return frame
        raise ValueError(f"unknown table {table!r}; use 'per_class', 'summary' or 'predictions'")

    def _repr_html_(self) -> str:
        from .evaluation import figures

        classes = self.get("classes", [])
        parts = [f"<h4>{html.escape(str(self.get('split', '')))} split, {self.get('n', '?')} images</h4>",
                 _table(["metric", "value", "95% interval"], self.summary_rows())]
        per_class = [[c, _num(m.get("precision")), _num(m.get("recall")), _num(m.get("f1")), m.get("support", "")]
                     for c, m in self.get("per_class", {}).items()]
        if per_class:
            parts.append(_table(["class", "precision", "recall", "F1", "images"], per_class))
        for w in self.get("warnings", []):
            parts.append(f"<p>⚠ {html.escape(w.get('message', str(w)) if isinstance(w, dict) else str(w))}</p>")
        if self.get("confusion_matrix"):
            parts.append(_img(figures.confusion_matrices(np.asarray(self["confusion_matrix"]), classes), "confusion matrix"))
        pr = self.get("predictions")
        if pr and len(pr.get("labels", [])) and len(set(pr["labels"])) > 1:
            parts.append(_img(figures.roc_curves(np.asarray(pr["labels"]), np.asarray(pr["probabilities"]), classes,
                                                 self.get("operating_point")), "ROC curves"))
        return "<div>" + "".join(parts) + "</div>"


class Predictions(_Pretty, list):
    """What `predict()` returns: a list of Prediction (path, label, probabilities, abstain, error)."""

    def __init__(self, items=(), classes: list[str] | None = None):
        super().__init__(items)
        self.classes = list(classes or [])

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for p in self:
            if p.label is not None:
                counts[p.label] = counts.get(p.label, 0) + 1
        labels = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4])
        extra = len(counts) > 4 and ", …" or ""
        errors = sum(1 for p in self if p.error)
        abstain = sum(1 for p in self if p.abstain)
        return f"Predictions({len(self)} images: {labels}{extra}; {abstain} abstain, {errors} unreadable)"

    def to_pandas(self):
        """One row per input: path, predicted, confidence, abstain, error, prob_<class>..."""
        pd = _pandas()
        classes = self.classes or sorted({c for p in self for c in p.probabilities})
        rows = [{"path": p.path, "predicted": p.label, "confidence": p.confidence if p.probabilities else None,
                 "abstain": p.abstain, "abstain_reason": p.abstain_reason, "ood_score": p.ood_score,
                 "in_distribution": p.in_distribution, "error": p.error,
                 **{f"prob_{c}": p.probabilities.get(c) for c in classes}} for p in self]
        return pd.DataFrame(rows, columns=["path", "predicted", "confidence", "abstain", "abstain_reason", "ood_score",
                                           "in_distribution", "error", *[f"prob_{c}" for c in classes]])

    def _repr_html_(self) -> str:
        shown = self.to_pandas().head(20)
        more = f"<p>… {len(self) - 20} more rows: .to_pandas()</p>" if len(self) > 20 else ""
        return f"<div><p>{html.escape(repr(self))}</p>{shown.to_html(index=False, na_rep='')}{more}</div>"


@dataclass(repr=False)
class TrainResult(_Pretty):
    """What `train()` returns: the run directory (as `run`, a RunHandle), the kept epoch, the
    validation metrics of the kept model and the training history."""

    run_dir: Path
    best_epoch: int
    epochs_run: int
    val_metrics: Metrics
    train_seconds: float
    run: Any = field(default=None)

    def __repr__(self) -> str:
        bal = self.val_metrics.get("balanced_accuracy") if self.val_metrics else None
        return (f"TrainResult({str(self.run_dir)!r}, {self.epochs_run} epoch(s), kept epoch {self.best_epoch}, "
                f"val balanced accuracy {_num(bal)}, {self.train_seconds:.0f} s)")

    @property
    def history(self):
        """history.csv as a DataFrame: one row per epoch run."""
        return _pandas().read_csv(Path(self.run_dir) / "history.csv")

    def to_pandas(self):
        return self.history

    def _repr_html_(self) -> str:
        from .evaluation import figures

        rows = [["run", str(self.run_dir)], ["epochs run", self.epochs_run], ["kept epoch", self.best_epoch],
                ["training time", f"{self.train_seconds:.0f} s"]]
        rows += [[f"validation {label}", f"{value} {ci}".strip()] for label, value, ci in
                 (self.val_metrics.summary_rows() if isinstance(self.val_metrics, Metrics) else [])]
        path = Path(self.run_dir) / "history.csv"
        curve = ""
        if path.is_file():
            history = figures.read_history(path)
            if len(history.get("epoch", [])):
                curve = _img(figures.training_curves(history, self.best_epoch), "training history")
        return f"<div>{_table(['', ''], rows)}{curve}</div>"


class Comparison(_Pretty, dict):
    """What `compare()` returns: the leaderboard (best balanced accuracy first) and pairwise tests."""

    def __repr__(self) -> str:
        board = ", ".join(f"{r['run']} {_num(r.get('balanced_accuracy'))}" for r in self.get("leaderboard", [])[:5])
        return f"Comparison({self.get('split')}, n={self.get('n')}, balanced accuracy: {board})"

    def to_pandas(self):
        """The leaderboard as a DataFrame, one row per run."""
        rows = [{k: v for k, v in r.items() if k not in ("ci", "warnings")} for r in self.get("leaderboard", [])]
        return _pandas().DataFrame(rows).set_index("run")

    def _repr_html_(self) -> str:
        from .evaluation.compare import roc_overlay

        table = self.to_pandas().to_html(float_format=lambda v: f"{v:.3f}", na_rep="–")
        pairs = [[p["a"], p["b"], _num(p["mcnemar"].get("p"))] for p in self.get("pairs", [])]
        try:
            roc = _img(roc_overlay(dict(self)), "ROC curves of the runs")
        except (KeyError, ValueError):
            roc = ""
        return f"<div>{table}{_table(['run A', 'run B', 'McNemar p'], pairs)}{roc}</div>"


class AuditReport(_Pretty):
    """What `audit()` returns: `.report` (the audit.json dict), `.lines` (the printed summary),
    `.to_pandas()` (images per class and split)."""

    def __init__(self, result):
        from .data.audit import summary_lines

        self.result = result
        self.report: dict = result.report
        self.lines: list[str] = summary_lines(result.report)

    def __repr__(self) -> str:
        s = self.report.get("summary", {})
        issues = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in s.items() if k != "leakage" and v)
        return (f"AuditReport({Path(str(self.report.get('root', ''))).name}: {self.report.get('images', '?')} images, "
                f"{len(self.report.get('classes', []))} classes; {issues or 'no issues found'})")

    def to_pandas(self):
        counts = self.report.get("counts", {})
        return _pandas().DataFrame(counts).fillna(0).astype(int)

    def _repr_html_(self) -> str:
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines)
        return f"<div><ul>{lines}</ul>{self.to_pandas().to_html()}</div>"


@dataclass(repr=False)
class ExplanationResult(_Pretty):
    """What `Run.explain()` returns: the explanation (heatmap, probabilities) and its picture."""

    explanation: Any
    classes: list[str]
    png: bytes
    source: str | None = None

    @property
    def label(self) -> str:
        return self.classes[self.explanation.target]

    @property
    def probability(self) -> float:
        return float(self.explanation.probabilities[self.explanation.target])

    @property
    def heatmap(self):
        return self.explanation.heatmap

    def __repr__(self) -> str:
        where = f"{Path(self.source).name}: " if self.source else ""
        note = self.explanation.message(self.classes)
        return (f"Explanation({where}{self.explanation.method} for {self.label}, p={self.probability:.2f}"
                f"{'; ' + note if note else ''})")

    def save(self, path: str | Path) -> Path:
        from .io import write_bytes

        return write_bytes(Path(path), self.png)

    def _repr_png_(self) -> bytes:
        return self.png

    def _repr_html_(self) -> str:
        return _img(self.png, repr(self))
