"""Can adapt tell, without labels, whether AdaBN will help? (ood/estimate.py, issue 16.)

For each run, the official test split is halved as in benchmarks/adapt.py; the run is adapted in
memory on one half exactly as `medclassify adapt` does (class-share re-weighted AdaBN) and scored on
the other. On the adaptation half itself, the accuracy of the source and the adapted model is
estimated from their confidence (ATC, Garg et al. 2022) in three ways:

  source threshold  the confidence threshold of the source model's validation images, for both
                    models (what adapt uses)
  own threshold     each model's threshold on the validation images (plain ATC; the adapted
                    statistics do not suit the source's validation images)
  mean confidence   the mean top probability

and the decision each would take (adapt when the adapted model's estimate is higher) is set against
the true change of accuracy on the scored half. The rule adapt uses was chosen on the seed-0 runs;
seeds 1 and 2 test it.

    python benchmarks/adapt_estimate.py RUN [RUN ...] [--out benchmarks/results/adapt_estimate.json]

Prints one line per half and writes the JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from adapt import halves, scores, stats_by_name, with_stats

ROOT = Path(__file__).resolve().parents[1]


def _decoded(run, split: str):
    from medclassify.data.cache import build_cache

    prep = run.preprocessing
    recs = run.records(split)
    cache = build_cache(sorted(r.path for r in recs), prep.image_size, prep.resize, prep.channels)
    recs = [r for r in recs if r.path not in cache.errors]
    labels = np.array([run.classes.index(r.label) for r in recs])
    return labels, np.asarray(cache.images[cache.rows([r.path for r in recs])])


def bench_run(run_path: Path, seed: int) -> list[dict]:
    from medclassify.engine import forward_images
    from medclassify.ood.estimate import confidence_threshold, estimated_accuracy
    from medclassify.run import load_run
    from medclassify.training.adapt import class_weights, resample, train_shares

    run = load_run(run_path)
    prep = run.preprocessing

    def probs(model, pixels):
        return forward_images(model, pixels, prep, tta=run.tta, temperature=run.temperature)[0]

    source = run.build_model()
    y_val, x_val = _decoded(run, "val")
    y, x = _decoded(run, "test")
    p_val, p_test = probs(source, x_val), probs(source, x)
    t_source = confidence_threshold(p_val, y_val)
    a, b = halves(y, seed)
    rows = []
    for on, scored, direction in ((a, b, "A->B"), (b, a, "B->A")):
        t0 = time.perf_counter()
        weights = class_weights(p_test[on], train_shares(run))
        adapted = with_stats(source, stats_by_name(source, x[on], resample(weights, seed), prep), 1.0)
        p_on, p_scored, p_val_adapted = probs(adapted, x[on]), probs(adapted, x[scored]), probs(adapted, x_val)
        t_own = confidence_threshold(p_val_adapted, y_val)
        before, after = scores(y[scored], p_test[scored].argmax(1)), scores(y[scored], p_scored.argmax(1))
        est = {"source threshold": (estimated_accuracy(p_test[on], t_source), estimated_accuracy(p_on, t_source)),
               "own threshold": (estimated_accuracy(p_test[on], t_source), estimated_accuracy(p_on, t_own)),
               "mean confidence": (float(p_test[on].max(1).mean()), float(p_on.max(1).mean()))}
        rows.append({"run": str(run_path), "dataset": Path(run.info["data"]["root"]).name, "direction": direction,
                     "n_adapt": len(on), "n_scored": len(scored),
                     "accuracy": {"source": before["accuracy"], "adapted": after["accuracy"]},
                     "balanced_accuracy": {"source": before["balanced_accuracy"], "adapted": after["balanced_accuracy"]},
                     "delta_accuracy_points": round(100 * (after["accuracy"] - before["accuracy"]), 2),
                     "estimates": {k: {"source": round(s, 4), "adapted": round(t, 4), "adapt": bool(t > s)} for k, (s, t) in est.items()},
                     "validation_accuracy": {"source": round(float((p_val.argmax(1) == y_val).mean()), 4),
                                             "adapted": round(float((p_val_adapted.argmax(1) == y_val).mean()), 4)},
                     "seconds": round(time.perf_counter() - t0, 1)})
        r = rows[-1]
        print(f"{r['dataset']:16s} {Path(run_path).name[-4:]:>4s} {direction} acc {100 * before['accuracy']:5.1f} -> "
              f"{100 * after['accuracy']:5.1f} ({r['delta_accuracy_points']:+5.1f})  " + "  ".join(
                  f"{k}: {100 * v['source']:.1f}->{100 * v['adapted']:.1f} {'adapt' if v['adapt'] else 'keep'}"
                  for k, v in r["estimates"].items()), flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per rule: how often it adapts where adaptation lowers accuracy by more than a point (the harm
    the issue forbids), and how often it keeps the source where adaptation would gain more than one."""
    out = {}
    for rule in rows[0]["estimates"]:
        adapts = [r for r in rows if r["estimates"][rule]["adapt"]]
        out[rule] = {"adapted": len(adapts), "of": len(rows),
                     "adapted_with_drop_over_1_point": sum(r["delta_accuracy_points"] < -1 for r in adapts),
                     "kept_with_gain_over_1_point": sum(r["delta_accuracy_points"] > 1 for r in rows if r not in adapts),
                     "worst_adapted_delta_points": min((r["delta_accuracy_points"] for r in adapts), default=None)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adapt_estimate.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for run in args.runs:
        if not (run / "run.json").is_file():
            print(f"skip {run}: no run.json")
            continue
        rows += bench_run(run, args.seed)
    if not rows:
        print("no runs measured")
        return 0
    result = {"command": "python benchmarks/adapt_estimate.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "rules": summary(rows), "rows": rows}
    print(json.dumps(result["rules"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
