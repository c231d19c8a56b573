"""Near-duplicate benchmark: 500 distinct images, 200 augmented copies planted across splits and 20
conflicting-label copies; the audit must find the planted pairs (recall >= 95%) without inventing
others (false pairs <= 1% of reported pairs).

    python benchmarks/audit_planted.py [--source chest_xray|synthetic] [--keep DIR]

The 500 originals are chest X-rays of 500 different patients from ../shared/datasets/chest_xray
(the hardest case: every chest X-ray looks alike at thumbnail size), or generated images when the
shared data is absent. Every copy gets all augmentations at once: resize by 0.8-1.2, rotate by up to
10 degrees, brightness x0.8-1.2, horizontal flip (half of them), then JPEG at another quality.
Writes benchmarks/results/audit_planted.json."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
SPLITS = ("train", "val", "test")


def chest_xray_originals(n: int, rng: random.Random) -> list[tuple[Image.Image, str]]:
    from medclassify.data.patients import PRESETS

    rx = re.compile(PRESETS["kermany"])
    files = sorted((SHARED / "chest_xray" / "train").rglob("*.jpeg"))
    rng.shuffle(files)
    seen, out, hashes = set(), [], set()
    for f in files:
        m = rx.search(f.name)
        key = m.group(0) if m else f.name
        if key in seen:
            continue
        img = Image.open(f).convert("L")
        digest = hash(img.tobytes())
        if digest in hashes:  # the set's own exact duplicates are not distinct images
            continue
        seen.add(key)
        hashes.add(digest)
        out.append((img, f.parent.name))
        if len(out) == n:
            break
    return out


def synthetic_originals(n: int, rng: random.Random) -> list[tuple[Image.Image, str]]:
    from medclassify.data.synthetic import texture_image

    return [(Image.fromarray(texture_image(rng.randrange(2**32), 128)), "lesion" if k % 2 else "normal") for k in range(n)]


def augment(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    from medclassify.data.synthetic import augmented_copy

    params = {"scale": round(rng.uniform(0.8, 1.2), 3), "angle": round(rng.uniform(-10, 10), 2),
              "brightness": round(rng.uniform(0.8, 1.2), 3), "flip": rng.random() < 0.5,
              "quality": rng.choice([60, 70, 80, 90])}
    return Image.fromarray(augmented_copy(np.asarray(img), **params)), params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["chest_xray", "synthetic"], default=None)
    ap.add_argument("--distinct", type=int, default=500)
    ap.add_argument("--copies", type=int, default=200)
    ap.add_argument("--conflicts", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="write the generated dataset here and keep it")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "audit_planted.json"))
    args = ap.parse_args()
    from medclassify.data.audit import audit_dataset

    source = args.source or ("chest_xray" if (SHARED / "chest_xray" / "train").is_dir() else "synthetic")
    rng = random.Random(args.seed)
    originals = (chest_xray_originals if source == "chest_xray" else synthetic_originals)(args.distinct, rng)
    classes = sorted({c for _, c in originals})
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="audit-planted-"))
    if work.exists():
        shutil.rmtree(work)
    origin_of: dict[str, int] = {}

    def save(img: Image.Image, split: str, label: str, name: str, k: int) -> None:
        folder = work / split / label
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        img.save(path, quality=95) if name.endswith(".jpg") else img.save(path)
        origin_of[str(path.resolve())] = k

    split_of = {}
    for k, (img, label) in enumerate(originals):
        split_of[k] = SPLITS[0] if k % 10 < 7 else SPLITS[1 + k % 2]
        save(img, split_of[k], label, f"orig{k:04d}.png", k)
    picks = rng.sample(range(len(originals)), args.copies + args.conflicts)
    planted = []
    for n, k in enumerate(picks):
        img, label = originals[k]
        copy, params = augment(img, rng)
        if n < args.copies:  # same label, another split
            split = rng.choice([s for s in SPLITS if s != split_of[k]])
            kind = "cross-split copy"
        else:  # same split, the other class
            split, label = split_of[k], rng.choice([c for c in classes if c != label])
            kind = "conflicting label"
        save(copy, split, label, f"copy{n:04d}_of{k:04d}.jpg", k)
        planted.append({"original": k, "kind": kind, **params})
    cache = tempfile.mkdtemp(prefix="audit-planted-cache-")
    os.environ["MEDCLASSIFY_CACHE"] = cache  # a cold audit, and the user's cache stays untouched
    t0 = time.perf_counter()
    result = audit_dataset(work)
    seconds = time.perf_counter() - t0
    report = result.report
    reported = set()
    for g in result.duplicates.near:
        for a, b in combinations(sorted(g), 2):
            reported.add((a, b))
    true_pairs = {p for p in reported if origin_of[p[0]] == origin_of[p[1]]}
    planted_pairs = len(planted)
    false_pairs = len(reported) - len(true_pairs)
    recall = len(true_pairs) / planted_pairs
    false_share = false_pairs / max(len(reported), 1)
    missed = []
    by_origin: dict[int, list[str]] = {}
    for p, k in origin_of.items():
        by_origin.setdefault(k, []).append(p)
    found_origins = {origin_of[a] for a, _ in true_pairs}
    missed = [p for p in planted if p["original"] not in found_origins]
    out = {
        "source": source, "distinct": len(originals), "planted_copies": args.copies, "planted_conflicts": args.conflicts,
        "planted_pairs": planted_pairs, "reported_pairs": len(reported), "true_pairs_found": len(true_pairs),
        "false_pairs": false_pairs, "recall": round(recall, 4), "false_pair_share": round(false_share, 4),
        "leakage_groups": report["leakage"]["groups"], "conflicting_label_groups": report["conflicting_labels"]["groups"],
        "targets": {"recall": 0.95, "false_pair_share": 0.01},
        "passed": recall >= 0.95 and false_share <= 0.01,
        "audit_seconds_cold": round(seconds, 1), "params": result.duplicates.params,
        "candidates_checked": result.duplicates.candidates, "missed": missed[:20],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "missed"}, indent=1))
    if missed:
        print(f"missed {len(missed)} planted pair(s), e.g. {missed[:3]}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    shutil.rmtree(cache, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
