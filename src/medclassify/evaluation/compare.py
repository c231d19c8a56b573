"""Comparing runs evaluated on the same test images: a leaderboard with 95% intervals, McNemar's
exact mid-p test on the paired correct/wrong outcomes, and DeLong's test for the difference of AUCs
(the fast O(n log n) algorithm of Sun & Xu 2014)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..errors import RunError
from .. import pages
from ..io import write_text
from ..reporting import Reporter
from ..run import Run, load_run
from .alarms import metric_warnings
from .evaluate import evaluate, saved_metrics
from .intervals import format_p
from .figures import PALETTE, _figure, png

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

    if len(runs) < 2:
        raise RunError("compare needs at least two runs.", "pass two or more run directories.")
    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    if len({r.path.resolve() for r in loaded}) < len(loaded):
        raise RunError("The same run is given twice.", "pass different run directories.")
    names = [r.path.name for r in loaded]
    if len(set(names)) < len(names):  # same folder name under different parents
        names = [str(r.path) for r in loaded]
    metrics = [saved_metrics(r, split) or evaluate(r, split=split, reporter=reporter, n_boot=n_boot, seed=seed)
               for r in loaded]
    y, probs = _aligned(metrics, names)
    board = [{"run": name, "model": r.model_name, "n": m["n"], **{k: m.get(k) for k in LEADERBOARD},
              "ci": m.get("ci", {}), "warnings": m.get("warnings", metric_warnings(m))}
             for name, r, m in zip(names, loaded, metrics)]
    order = sorted(range(len(board)), key=lambda i: -(board[i]["balanced_accuracy"] or 0))
    pairs = []
    for i, j in itertools.combinations(order, 2):
        correct_i, correct_j = probs[i].argmax(1) == y, probs[j].argmax(1) == y
        tests = {"a": names[i], "b": names[j], "mcnemar": mcnemar_midp(correct_i, correct_j),
                 "delong": {metrics[0]["classes"][c]: delong(y == c, si, probs[j][:, c])
                            for c, si in _auc_scores(probs[i], y)}}
        pairs.append(tests)
    return {"split": split, "n": int(len(y)), "classes": metrics[0]["classes"], "leaderboard": [board[i] for i in order],
            "pairs": pairs, "differences": config_differences([loaded[i] for i in order], [names[i] for i in order]),
            "scores": {"labels": y.tolist(), "probabilities": {names[i]: np.round(probs[i], 6).tolist() for i in order}}}


def _settings(run: Run) -> dict:
    """The settings that can make two runs differ, flattened, with readable names."""
    c = run.info.get("config", {})
    flat = {k: v for k, v in c.items() if k not in ("out", "overwrite") and not isinstance(v, (dict, list))}
    flat["start weights"] = (f"file {Path(c['weights']).name}" if c.get("weights") else run.info.get("pretrained", "none"))
    flat["epochs run"] = run.info.get("epochs_run")
    flat["best epoch"] = run.info.get("best_epoch")
    flat["test-time augmentation"] = "on" if run.tta else "off"
    cal = run.info.get("calibration")
    flat["calibration"] = f"temperature {cal['temperature']:.3f}" if cal else "not fitted"
    return flat


def config_differences(runs: list[Run], names: list[str]) -> list[list]:
    """[[setting, value of run 1, value of run 2, ...]] for each setting whose values differ."""
    settings = [_settings(r) for r in runs]
    keys = sorted(set().union(*settings))
    rows = []
    for k in keys:
        values = [s.get(k) for s in settings]
        if len({repr(v) for v in values}) > 1:
            rows.append([k.replace("_", " ")] + ["–" if v is None else str(v) for v in values])
    return rows


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


HEADERS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1",
           "auc": "AUC (ROC)", "sensitivity": "Sensitivity", "specificity": "Specificity"}


def roc_overlay(result: dict) -> bytes:
    """Every run's ROC curve on one plot (binary: the positive class; multiclass: one panel per class)."""
    from sklearn.metrics import roc_auc_score, roc_curve


    y = np.asarray(result["scores"]["labels"])
    classes = result["classes"]
    shown = [1] if len(classes) == 2 else [c for c in range(len(classes)) if 0 < (y == c).sum() < len(y)][:6]
    fig = _figure(4.6 * min(len(shown), 3), 4.2 * int(np.ceil(len(shown) / 3)))
    axes = np.atleast_1d(fig.subplots(int(np.ceil(len(shown) / 3)), min(len(shown), 3), squeeze=False)).ravel()
    for ax, c in zip(axes, shown):
        for k, (name, probs) in enumerate(result["scores"]["probabilities"].items()):
            p = np.asarray(probs)[:, c]
            fpr, tpr, _ = roc_curve(y == c, p)
            ax.plot(fpr, tpr, color=PALETTE[k % len(PALETTE)], label=f"{name} (AUC {roc_auc_score(y == c, p):.3f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.set(title=f"ROC: {classes[c]}" + (" vs the rest" if len(classes) > 2 else ""),
               xlabel="false positive rate (1 - specificity)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    return png(fig)


def write_compare_html(result: dict, out: str | Path) -> Path:
    keys = [k for k in LEADERBOARD if any(row.get(k) is not None for row in result["leaderboard"])]
    board_rows = [[r["run"], r["model"]] + [{"v": _fmt(r[k]), "ci": pages.interval(r["ci"].get(k), percent=False)}
                                             for k in keys] for r in result["leaderboard"]]
    pair_rows = [[p["a"], p["b"], p["mcnemar"]["a_only"], p["mcnemar"]["b_only"], format_p(p["mcnemar"]["p_value"]),
                  "; ".join(f"{c}: {_fmt(d['auc_a'])} vs {_fmt(d['auc_b'])} (p {_p_text(d['p_value'])})"
                            for c, d in p["delong"].items()) or "n/a"]
                 for p in result["pairs"]]
    runs = [r["run"] for r in result["leaderboard"]]
    differences = result.get("differences") or []
    warnings = [f"{r['run']}: {w['message']}" for r in result["leaderboard"] for w in r.get("warnings", [])]
    page = pages.render(
        "compare.html", warnings=warnings, title=f"Comparison on the {result['split']} split ({result['n']} images)",
        subtitle=f"{len(runs)} runs: {', '.join(runs)}", board_headers=["Run", "Model"] + [HEADERS[k] for k in keys],
        board_rows=board_rows, pair_rows=pair_rows, n=result["n"],
        roc=roc_overlay(result) if result.get("scores") else None, runs=runs, differences=differences,
        footer="Generated by medclassify compare.")
    return write_text(Path(out), page)
