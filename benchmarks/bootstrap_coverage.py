"""Bootstrap CI coverage: on a simulated binary classifier whose true accuracy, sensitivity and AUC
are known, how often does the 95% interval evaluate reports (exact for proportions, bootstrap BCa
for AUC) contain the truth? Target for
accuracy: 93-97% of 400 simulations.

    python benchmarks/bootstrap_coverage.py [--simulations 400 --n 300 --resamples 1000 --repeats 1]

With 400 simulations the coverage itself has a standard error of about 1.1 points, so --repeats N
runs N independent batches (seeds seed..seed+N-1) to show its spread; the pass/fail is the first.

Each simulation draws a fresh test set of fixed composition (n/3 positives, as in a typical
screening test set): every negative is classified correctly with probability 0.90 (specificity),
every positive with 0.80 (sensitivity), so the true accuracy of this composition is
(2/3)*0.90 + (1/3)*0.80; scores are N(0,1) for negatives and N(1.5,1) for positives, true AUC
Phi(1.5/sqrt 2). Writes benchmarks/results/bootstrap_coverage.json.

The extremes (on by default; --no-extremes skips them): proportions whose observed value is often
0/n or n/n. For true sensitivity 0.97 / 1.0 and specificity 0.03 / 0.0 on small classes, the coverage
of the exact Clopper-Pearson interval that evaluate uses against the plain percentile bootstrap
(which collapses to a zero-width interval at 0/n and n/n). Pass: the exact interval covers at least
93% in every case."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medclassify.evaluation.bootstrap import bootstrap_ci  # noqa: E402
from medclassify.evaluation.intervals import proportion_cis  # noqa: E402
from medclassify.io import write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulations", type=int, default=400)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--extremes", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--extreme-n", type=int, nargs="+", default=[20, 40], help="class sizes for the extremes")
    args = ap.parse_args()
    results = [simulate(args, args.seed + r) for r in range(args.repeats)]
    result = dict(results[0], repeats=[r["coverage"] for r in results])
    if args.extremes:
        result["extremes"] = extremes(args)
        result["passed"] = result["passed"] and all(c["passed"] for c in result["extremes"])
    write_json(ROOT / "benchmarks" / "results" / "bootstrap_coverage.json", result)
    return 0 if result["passed"] else 1


def extremes(args) -> list[dict]:
    """Coverage of exact versus percentile intervals where the observed proportion is often 0/n or n/n."""
    rng = np.random.default_rng(args.seed + 10_000)
    cases = []
    for n in args.extreme_n:
        for sens, spec in ((0.97, 0.03), (1.0, 0.0)):
            y = np.r_[np.zeros(n, int), np.ones(n, int)]
            hits = {"exact": {"sensitivity": 0, "specificity": 0}, "percentile": {"sensitivity": 0, "specificity": 0}}
            at_edge = 0
            for sim in range(args.simulations):
                correct = rng.random(2 * n) < np.where(y == 1, sens, spec)
                pred = np.where(correct, y, 1 - y)
                cm = np.array([[np.sum((y == 0) & (pred == 0)), np.sum((y == 0) & (pred == 1))],
                               [np.sum((y == 1) & (pred == 0)), np.sum((y == 1) & (pred == 1))]])
                at_edge += cm[1, 1] == n
                probs = np.c_[1 - 0.8 * pred - 0.1, 0.8 * pred + 0.1]
                both = {"exact": proportion_cis(cm),
                        "percentile": bootstrap_ci(y, probs, n_boot=args.resamples, seed=sim, pred=pred, method="percentile")}
                for method, ci in both.items():
                    for k, t in (("sensitivity", sens), ("specificity", spec)):
                        hits[method][k] += ci[k][0] <= t <= ci[k][1]
            coverage = {m: {k: v / args.simulations for k, v in h.items()} for m, h in hits.items()}
            case = {"n_per_class": n, "true_sensitivity": sens, "true_specificity": spec,
                    "share_observed_n_of_n": at_edge / args.simulations, "coverage": coverage,
                    "passed": min(coverage["exact"].values()) >= 0.93}
            cases.append(case)
            print(f"extreme n={n:3d} sens {sens:.2f} spec {spec:.2f} ({case['share_observed_n_of_n']:.0%} at n/n): "
                  f"exact {coverage['exact']['sensitivity']:.1%}/{coverage['exact']['specificity']:.1%}, "
                  f"percentile {coverage['percentile']['sensitivity']:.1%}/{coverage['percentile']['specificity']:.1%}"
                  f" -> {'PASS' if case['passed'] else 'FAIL'}")
    return cases


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
