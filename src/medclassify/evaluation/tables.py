"""Console tables of metrics (rich)."""

from __future__ import annotations


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _ci(ci: dict | None, key: str) -> str:
    if not ci or key not in ci:
        return ""
    lo, hi = ci[key]
    return f"{lo:.4f} – {hi:.4f}"


def metrics_table(metrics: dict, title: str):
    from rich.table import Table

    has_ci = "ci" in metrics
    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    if has_ci:
        t.add_column("95% CI", justify="right")
    for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "qwk",
                "log_loss", "ece"):
        if key in metrics:
            t.add_row(key, _fmt(metrics[key]), *([_ci(metrics.get("ci"), key)] if has_ci else []))
    per = Table(title="per class", show_header=True)
    cols = ("class", "precision", "recall", "f1", "support")
    for col in cols:
        per.add_column(col, justify="left" if col == "class" else "right")
    for i, (c, m) in enumerate(metrics["per_class"].items()):
        never = sum(row[i] for row in metrics["confusion_matrix"]) == 0  # precision undefined, not 0
        cells = ["n/a" if k == "precision" and never else
                 _fmt(m[k]) + (f" ({_ci(m['ci'], k)})" if m.get("ci", {}).get(k) else "") for k in cols[1:4]]
        per.add_row(c, *cells, str(m["support"]))
    cm = Table(title="confusion matrix (rows: true, columns: predicted)", show_header=True)
    cm.add_column("")
    for c in metrics["classes"]:
        cm.add_column(c, justify="right")
    for c, row in zip(metrics["classes"], metrics["confusion_matrix"]):
        cm.add_row(c, *map(str, row))
    out = [t, per, cm]
    if "operating_point" in metrics:
        out.append(operating_point_table(metrics["operating_point"], metrics.get("split", "test")))
    return out


def operating_point_table(op: dict, split: str):
    from rich.table import Table

    (target_name, target), = op["target"].items()
    t = Table(title=f"operating threshold {op['threshold']:.4f} on P({op['positive_class']}), chosen on validation "
                    f"for {target_name} >= {target:g}", show_header=True)
    for col in ("split", "sensitivity", "specificity", "PPV", "NPV"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for name in ("val", split):
        fig = op[name]
        t.add_row(name, *[_fmt(fig[k]) + (f" ({_ci(fig.get('ci'), k)})" if fig.get("ci", {}).get(k) else "")
                          for k in ("sensitivity", "specificity", "ppv", "npv")])
    return t
