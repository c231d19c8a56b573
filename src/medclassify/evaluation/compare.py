"""Comparing runs evaluated on the same test images: a leaderboard with 95% intervals, McNemar's
exact mid-p test on the paired correct/wrong outcomes, and DeLong's test for the difference of AUCs
(the fast O(n log n) algorithm of Sun & Xu 2014)."""

from __future__ import annotations

import html
import itertools
import os
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..reporting import Reporter
from ..run import Run, load_run
from .intervals import format_p

LEADERBOARD = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity")


def mcnemar_midp(correct_a, correct_b) -> dict:
    """Exact McNemar mid-p test (Fagerland et al. 2013) on the discordant pairs: b = A right and B
    wrong, c = A wrong and B right. Two-sided."""
    from scipy.stats import binom

    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    n = b + c
    if n == 0:
        return {"a_only": b, "b_only": c, "p_value": 1.0}
    k = min(b, c)
    p = 2 * binom.cdf(k, n, 0.5) - binom.pmf(k, n, 0.5)
    return {"a_only": b, "b_only": c, "p_value": float(min(1.0, p))}


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def delong(y, scores_a, scores_b) -> dict:
    """DeLong's test of AUC(A) = AUC(B) on the same cases (fast version: midranks of the pooled,
    positive-only and negative-only scores give the structural components)."""
    from scipy.stats import norm

    y = np.asarray(y).astype(bool)
    pos_n, neg_n = int(y.sum()), int((~y).sum())
    if pos_n == 0 or neg_n == 0:
        return {"auc_a": None, "auc_b": None, "p_value": None}
    scores = np.stack([np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)])
    pos, neg = scores[:, y], scores[:, ~y]
    aucs, v10, v01 = [], [], []
    for r in range(2):
        tz = _midranks(np.r_[pos[r], neg[r]])
        tx, ty = _midranks(pos[r]), _midranks(neg[r])
        aucs.append(tz[:pos_n].sum() / (pos_n * neg_n) - (pos_n + 1) / (2 * neg_n))
        v01.append((tz[:pos_n] - tx) / neg_n)        # per positive case
        v10.append(1 - (tz[pos_n:] - ty) / pos_n)    # per negative case
    aucs = np.array(aucs)
    s = np.cov(np.array(v01)) / pos_n + np.cov(np.array(v10)) / neg_n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        p = 1.0 if diff == 0 else 0.0
    else:
        p = float(2 * norm.sf(abs(diff) / np.sqrt(var)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": float(diff), "p_value": p}


def _auc_scores(probs: np.ndarray, y: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Binary: the positive class's score. Multiclass: one-vs-rest per class (DeLong per class)."""
    if probs.shape[1] == 2:
        return [(1, probs[:, 1])]
    return [(c, probs[:, c]) for c in range(probs.shape[1]) if 0 < (y == c).sum() < len(y)]


def _aligned(metrics: list[dict], names: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and each run's probabilities in one common image order; runs must share the test set."""
    ref = metrics[0]["predictions"]
    ref_paths = ref["paths"]
    y = np.asarray(ref["labels"])
    probs = []
    for m, name in zip(metrics, names):
        pr = m["predictions"]
        if m["classes"] != metrics[0]["classes"]:
            raise RunError(f"Run {name} has classes {', '.join(m['classes'])}, not {', '.join(metrics[0]['classes'])}.",
                           "compare runs trained on the same classes.")
        if sorted(pr["paths"]) != sorted(ref_paths):
            raise RunError(f"Runs {names[0]} and {name} were evaluated on different images "
                           f"({len(ref_paths)} vs {len(pr['paths'])}).",
                           "compare runs evaluated on the same test set (same data and split).")
        index = {p: i for i, p in enumerate(pr["paths"])}
        order = [index[p] for p in ref_paths]
        if not np.array_equal(np.asarray(pr["labels"])[order], y):
            raise RunError(f"Runs {names[0]} and {name} disagree on the labels of the test images.",
                           "compare runs evaluated on the same labelled test set.")
        probs.append(np.asarray(pr["probabilities"])[order])
    return y, probs


def compare_runs(runs: list[str | Path | Run], split: str = "test", reporter: Reporter | None = None,
                 n_boot: int = 1000, seed: int = 0) -> dict:
    """Leaderboard (sorted by balanced accuracy) and pairwise tests of runs on the same split."""
    from .evaluate import evaluate
    from .report import _saved_metrics

    if len(runs) < 2:
        raise RunError("compare needs at least two runs.", "pass two or more run directories.")
    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    if len({r.path.resolve() for r in loaded}) < len(loaded):
        raise RunError("The same run is given twice.", "pass different run directories.")
    names = [r.path.name for r in loaded]
    if len(set(names)) < len(names):  # same folder name under different parents
        names = [str(r.path) for r in loaded]
    metrics = [_saved_metrics(r, split) or evaluate(r, split=split, reporter=reporter, n_boot=n_boot, seed=seed)
               for r in loaded]
    y, probs = _aligned(metrics, names)
    board = [{"run": name, "model": r.model_name, "n": m["n"], **{k: m.get(k) for k in LEADERBOARD},
              "ci": m.get("ci", {})} for name, r, m in zip(names, loaded, metrics)]
    order = sorted(range(len(board)), key=lambda i: -(board[i]["balanced_accuracy"] or 0))
    pairs = []
    for i, j in itertools.combinations(order, 2):
        correct_i, correct_j = probs[i].argmax(1) == y, probs[j].argmax(1) == y
        tests = {"a": names[i], "b": names[j], "mcnemar": mcnemar_midp(correct_i, correct_j),
                 "delong": {metrics[0]["classes"][c]: delong(y == c, si, probs[j][:, c])
                            for c, si in _auc_scores(probs[i], y)}}
        pairs.append(tests)
    return {"split": split, "n": int(len(y)), "classes": metrics[0]["classes"], "leaderboard": [board[i] for i in order],
            "pairs": pairs}


def _p_text(p) -> str:
    text = format_p(p)
    return text if text.startswith(("<", "n/a")) else f"= {text}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def leaderboard_tables(result: dict):
    from rich.table import Table

    board = Table(title=f"leaderboard on the {result['split']} split ({result['n']} images; 95% CIs)")
    board.add_column("run")
    keys = [k for k in LEADERBOARD if any(row.get(k) is not None for row in result["leaderboard"])]
    for k in keys:
        board.add_column(k, justify="right")
    for row in result["leaderboard"]:
        board.add_row(row["run"], *[_fmt(row[k]) + (f"\n({row['ci'][k][0]:.3f}–{row['ci'][k][1]:.3f})" if k in row["ci"] else "")
                                    for k in keys])
    tests = Table(title="paired tests (p < 0.05: the difference is unlikely to be chance)")
    for col in ("A", "B", "A right, B wrong", "A wrong, B right", "McNemar mid-p", "AUC A", "AUC B", "DeLong p"):
        tests.add_column(col, justify="left" if col in ("A", "B") else "right")
    for p in result["pairs"]:
        mc = p["mcnemar"]
        for k, (cls, d) in enumerate(p["delong"].items() or [(None, {})]):
            label = f" [{cls}]" if len(p["delong"]) > 1 else ""
            tests.add_row(p["a"] if k == 0 else "", p["b"] if k == 0 else "",
                          *(map(str, (mc["a_only"], mc["b_only"])) if k == 0 else ("", "")),
                          format_p(mc["p_value"]) if k == 0 else "", _fmt(d.get("auc_a")) + label, _fmt(d.get("auc_b")),
                          format_p(d.get("p_value")))
    return [board, tests]


def write_compare_html(result: dict, out: str | Path) -> Path:
    e = html.escape
    keys = [k for k in LEADERBOARD if any(row.get(k) is not None for row in result["leaderboard"])]
    head = "".join(f"<th>{e(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{e(r['run'])}</td><td>{e(r['model'])}</td>" + "".join(
            f"<td>{_fmt(r[k])}<br><small>{'%.3f–%.3f' % tuple(r['ci'][k]) if k in r['ci'] else ''}</small></td>" for k in keys)
        + "</tr>" for r in result["leaderboard"])
    pairs = "".join(
        f"<tr><td>{e(p['a'])}</td><td>{e(p['b'])}</td><td>{p['mcnemar']['a_only']}</td><td>{p['mcnemar']['b_only']}</td>"
        f"<td>{format_p(p['mcnemar']['p_value'])}</td><td>"
        + "<br>".join(f"{e(c)}: {_fmt(d['auc_a'])} vs {_fmt(d['auc_b'])}, p "
                      + _p_text(d["p_value"]) for c, d in p["delong"].items())
        + "</td></tr>" for p in result["pairs"])
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>medclassify comparison</title>
<style>body{{font-family:system-ui,Arial,sans-serif;max-width:1100px;margin:auto;padding:1.5rem;color:#1d2733}}
table{{border-collapse:collapse;margin:0.8rem 0}}td,th{{border:1px solid #d5dbe3;padding:0.3rem 0.6rem;text-align:right}}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){{text-align:left}}th{{background:#f2f5f8}}small{{color:#5b6775}}</style></head><body>
<h1>Comparison on the {e(result['split'])} split ({result['n']} images)</h1>
<p>Sorted by balanced accuracy; under each value its 95% bootstrap interval. Overlapping intervals do not settle
which model is better: the paired tests below compare the models image by image on the same cases.</p>
<table><tr><th>run</th><th>model</th>{head}</tr>{rows}</table>
<h2>Paired tests</h2>
<p>McNemar's exact mid-p test uses only the images on which exactly one model is right; DeLong's test compares the
AUCs. A p-value below 0.05 means a difference this large would rarely arise by chance if the models were equally good.</p>
<table><tr><th>A</th><th>B</th><th>A right, B wrong</th><th>A wrong, B right</th><th>McNemar mid-p</th><th>AUC (DeLong)</th></tr>
{pairs}</table></body></html>"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
