"""Audit speed: chest_xray (5,840 images) cold (empty cache) and warm, as `medclassify audit` runs it
(scan, fingerprints, duplicate search, report, audit.json and audit.html); and the near-duplicate
search on 100,000 synthetic images (7 rotation hashes each, as the audit indexes them).

    python benchmarks/audit_speed.py [--skip-chest-xray] [--n 100000]

Targets: <= 45 s cold and <= 5 s warm on 2 cores; 100,000 images searched in <= 60 s.
Writes benchmarks/results/audit_speed.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def chest_xray_times() -> dict:
    from medclassify.data.audit import audit_dataset, write_audit

    data = SHARED / "chest_xray"
    if not data.is_dir():
        return {"skipped": f"{data} not found"}
    cache = tempfile.mkdtemp(prefix="audit-speed-cache-")
    out = tempfile.mkdtemp(prefix="audit-speed-out-")
    os.environ["MEDCLASSIFY_CACHE"] = cache
    try:
        times, result = [], None
        for _ in range(3):  # cold, then warm twice
            t0 = time.perf_counter()
            result = audit_dataset(data, "kermany")
            write_audit(result, Path(out))
            times.append(time.perf_counter() - t0)
        s = result.report
        return {"images": s["images"], "cold_s": round(times[0], 1), "warm_s": round(min(times[1:]), 2),
                "targets": {"cold_s": 45, "warm_s": 5},
                "exact_duplicate_groups": s["exact_duplicates"]["groups"],
                "exact_groups_within_one_split_and_class": s["exact_duplicates"]["within_one_split_and_class"],
                "exact_duplicate_groups_across_splits": s["exact_duplicates"]["cross_split_groups"],
                "near_duplicate_groups": s["near_duplicates"]["groups"],
                "near_candidates_checked": s["near_duplicates"]["candidates_checked"],
                "kermany_patients": s["patients"]["patients"],
                "kermany_patients_in_train_and_test": s["patients"]["by_splits"].get("test/train", 0),
                "cpu_cores": os.cpu_count()}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def synthetic_search(n: int, planted: int = 1000, seed: int = 0) -> dict:
    """n random 64-bit images with 7 rotation hashes each (the rotations of one image differ in a
    few bits), plus `planted` near copies (<= 4 bits off a random rotation, half of them mirrored)."""
    from medclassify.data import hashing

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, n, dtype=np.uint64) ^ (rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(63))

    def flip_bits(h: np.ndarray, max_bits: int) -> np.ndarray:
        """h with 0..max_bits random bits of each hash flipped."""
        count = rng.integers(0, max_bits + 1, len(h))
        rank = np.argsort(rng.random((len(h), 64)), axis=1).argsort(axis=1)
        return h ^ hashing.pack_bits(rank < count[:, None])

    rotations = np.stack([base if a == hashing.CENTRE else flip_bits(base, 6) for a in range(len(hashing.ANGLES))], axis=1)
    sources = rng.choice(n - planted, planted, replace=False)
    copies = n - planted + np.arange(planted)  # the last `planted` images are copies
    angle = rng.integers(0, len(hashing.ANGLES), planted)
    copy_hash = flip_bits(rotations[sources, angle], 4)
    mirrored = rng.random(planted) < 0.5
    copy_hash[mirrored] ^= np.uint64(hashing.MIRROR_MASK)
    rotations[copies] = np.stack([copy_hash if a == hashing.CENTRE else flip_bits(copy_hash, 6)
                                  for a in range(len(hashing.ANGLES))], axis=1)
    queries = rotations[:, hashing.CENTRE]
    owner = np.repeat(np.arange(n), rotations.shape[1])
    t0 = time.perf_counter()
    i, j, _ = hashing.near_pairs(queries, rotations.ravel(), owner, hashing.MAX_HAMMING)
    seconds = time.perf_counter() - t0
    found = set(zip(i.tolist(), j.tolist()))
    hits = sum((min(a, b), max(a, b)) in found for a, b in zip(sources.tolist(), copies.tolist()))
    return {"images": n, "hashes_indexed": int(rotations.size), "max_hamming": hashing.MAX_HAMMING,
            "seconds": round(seconds, 1), "target_s": 60, "pairs_reported": len(found),
            "planted_pairs": planted, "planted_found": hits,
            "all_pairs_naive": n * (n - 1) // 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--skip-chest-xray", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "audit_speed.json"))
    args = ap.parse_args()
    out = {}
    if not args.skip_chest_xray:
        out["chest_xray"] = chest_xray_times()
        print("chest_xray:", json.dumps(out["chest_xray"], indent=1))
    out["synthetic_search"] = synthetic_search(args.n)
    print("synthetic search:", json.dumps(out["synthetic_search"], indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    cx, ss = out.get("chest_xray", {}), out["synthetic_search"]
    ok = ss["seconds"] <= 60 and ("cold_s" not in cx or (cx["cold_s"] <= 45 and cx["warm_s"] <= 5))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
