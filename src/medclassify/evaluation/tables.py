"""Console tables of metrics (rich)."""

from __future__ import annotations


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def metrics_table(metrics: dict, title: str):
    from rich.table import Table

    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "log_loss"):
        if key in metrics:
            t.add_row(key, _fmt(metrics[key]))
    per = Table(title="per class", show_header=True)
    for col in ("class", "precision", "recall", "f1", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for c, m in metrics["per_class"].items():
        per.add_row(c, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), str(m["support"]))
    cm = Table(title="confusion matrix (rows: true, columns: predicted)", show_header=True)
    cm.add_column("")
    for c in metrics["classes"]:
        cm.add_column(c, justify="right")
    for c, row in zip(metrics["classes"], metrics["confusion_matrix"]):
        cm.add_row(c, *map(str, row))
    return [t, per, cm]
