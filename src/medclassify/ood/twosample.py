"""The shift check's test on features: maximum mean discrepancy (MMD, Gretton et al. 2012) with a Gaussian
kernel on L2-normalised features (bandwidth: the median pairwise distance), and a permutation p-value
with a fixed seed, so the same images always give the same answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .guard import Guard

MAX_PER_SAMPLE = 500  # images drawn from each side: the kernel matrix stays small (1000 x 1000)
PERMUTATIONS = 1000


def _normalised(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def mmd_test(a: np.ndarray, b: np.ndarray, seed: int = 0, permutations: int = PERMUTATIONS,
             max_per_sample: int = MAX_PER_SAMPLE) -> dict:
    """{"mmd2", "p_value", "n_a", "n_b", "permutations", "bandwidth"} for samples a (N, D) and b (M, D)."""
    rng = np.random.default_rng(seed)
    a = a[np.sort(rng.choice(len(a), max_per_sample, replace=False))] if len(a) > max_per_sample else a
    b = b[np.sort(rng.choice(len(b), max_per_sample, replace=False))] if len(b) > max_per_sample else b
    x = _normalised(np.concatenate([a, b]))
    sq = np.maximum(2 - 2 * x @ x.T, 0)  # squared distances of unit vectors
    off = sq[np.triu_indices(len(x), 1)]
    bandwidth = float(np.median(off)) if off.size and np.median(off) > 0 else 1.0
    k = np.exp(-sq / bandwidth)
    n, m = len(a), len(b)
    signs = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])

    def stat(s: np.ndarray) -> np.ndarray:  # biased MMD^2 of each row's split: s^T K s
        s = np.atleast_2d(s)
        return ((s @ k) * s).sum(1)

    observed = float(stat(signs)[0])
    perms = np.stack([signs[rng.permutation(n + m)] for _ in range(permutations)])
    null = np.concatenate([stat(perms[i : i + 100]) for i in range(0, permutations, 100)])
    p = float((1 + (null >= observed - 1e-12).sum()) / (1 + permutations))
    return {"test": "MMD (Gaussian kernel, permutation p-value)", "mmd2": observed, "p_value": p, "n_a": n, "n_b": m,
            "permutations": permutations, "seed": seed, "bandwidth": bandwidth}


ALPHA = 0.01  # p-value under which the image set is said to differ from the training distribution


def shift_from_features(guard: "Guard", features: np.ndarray, name: str, seed: int = 0) -> dict:
    """The shift check of an image set's features against the guard's reference."""
    scores, inside = guard.flags(features)
    expected = 1 - float(guard.info.get("quantile", 0.95))
    out = {"status": "checked", "name": name, "images": int(len(features)), "flagged": float((~inside).mean()),
           "expected_flagged": round(expected, 6), "reference": guard.info.get("threshold_on", "val"),
           "reference_images": int(len(guard.reference))}
    test = mmd_test(guard.reference, guard.penultimate(features), seed=seed)
    out.update(test=test, p_value=test["p_value"], shift=bool(test["p_value"] < ALPHA), alpha=ALPHA)
    out["message"] = shift_sentence(out)
    return out


def shift_sentence(check: dict) -> str:
    if check.get("status") != "checked":
        return f"No shift check: {check.get('reason', 'the run has no out-of-distribution guard')}."
    rate = f"{check['flagged']:.0%} of its images are flagged as out-of-distribution ({check['expected_flagged']:.0%} expected)"
    p = f"MMD two-sample test p = {check['p_value']:.3g}"
    if check["shift"]:
        return (f"The {check['name']} images differ from the training distribution ({p}; {rate}): "
                f"validation figures will overstate {check['name']} figures.")
    return f"No shift detected between the {check['name']} images and the training distribution ({p}; {rate})."
