"""Bootstrap CI coverage: on a simulated binary classifier whose true accuracy, sensitivity and AUC
are known, how often does the 95% stratified bootstrap interval contain the truth? Target for
accuracy: 93-97% of 400 simulations.

    python benchmarks/bootstrap_coverage.py [--simulations 400 --n 300 --resamples 1000 --repeats 1]

With 400 simulations the coverage itself has a standard error of about 1.1 points, so --repeats N
runs N independent batches (seeds seed..seed+N-1) to show its spread; the pass/fail is the first.

Each simulation draws a fresh test set of fixed composition (n/3 positives, as in a typical
screening test set): every negative is classified correctly with probability 0.90 (specificity),
every positive with 0.80 (sensitivity), so the true accuracy of this composition is
(2/3)*0.90 + (1/3)*0.80; scores are N(0,1) for negatives and N(1.5,1) for positives, true AUC
Phi(1.5/sqrt 2). Writes benchmarks/results/bootstrap_coverage.json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medclassify.evaluation.bootstrap import bootstrap_ci  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulations", type=int, default=400)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    results = [simulate(args, args.seed + r) for r in range(args.repeats)]
    result = dict(results[0], repeats=[r["coverage"] for r in results])
    out = ROOT / "benchmarks" / "results" / "bootstrap_coverage.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


def simulate(args, seed: int) -> dict:
    sens, spec, shift = 0.80, 0.90, 1.5
    n_pos = args.n // 3
    n_neg = args.n - n_pos
    truth = {"accuracy": (n_neg * spec + n_pos * sens) / args.n, "sensitivity": sens, "specificity": spec,
             "auc": float(norm.cdf(shift / np.sqrt(2)))}
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    hits = {k: 0 for k in truth}
    widths = {k: [] for k in truth}
    t0 = time.perf_counter()
    for sim in range(args.simulations):
        correct = rng.random(args.n) < np.where(y == 1, sens, spec)
        pred = np.where(correct, y, 1 - y)
        scores = rng.normal(shift * y, 1.0)
        p = 1 / (1 + np.exp(-scores))
        probs = np.c_[1 - p, p]
        ci = bootstrap_ci(y, probs, n_boot=args.resamples, seed=seed * 100003 + sim, pred=pred)
        for k, t in truth.items():
            lo, hi = ci[k]
            hits[k] += lo <= t <= hi
            widths[k].append(hi - lo)
    seconds = time.perf_counter() - t0
    coverage = {k: hits[k] / args.simulations for k in truth}
    result = {"seed": seed, "simulations": args.simulations, "n": args.n, "resamples": args.resamples, "truth": truth,
              "coverage": coverage, "mean_width": {k: float(np.mean(v)) for k, v in widths.items()},
              "target_accuracy_coverage": [0.93, 0.97], "passed": 0.93 <= coverage["accuracy"] <= 0.97,
              "seconds": round(seconds, 1), "ms_per_bootstrap": round(1000 * seconds / args.simulations, 1)}
    for k in truth:
        print(f"{k:12s} truth {truth[k]:.4f}  coverage {coverage[k]:.1%}  mean width {result['mean_width'][k]:.4f}")
    print(f"seed {seed}: {args.simulations} simulations x {args.resamples} resamples in {seconds:.1f} s "
          f"({result['ms_per_bootstrap']} ms each); accuracy target 93-97%: {'PASS' if result['passed'] else 'FAIL'}")
    return result


if __name__ == "__main__":
    sys.exit(main())
