"""What the decode-once cache buys: one epoch of training batches produced by decoding every JPEG
(what a Keras ImageDataGenerator or a plain torchvision ImageFolder does each epoch) versus read
from the uint8 memmap cache, plus the cache's cold build and warm open times.

    python benchmarks/cache_effect.py [--dataset chest_xray] [--size 192]

Prints the figures and writes benchmarks/results/cache_effect.json."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="chest_xray")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    data = SHARED / args.dataset
    if not data.is_dir():
        print(f"SKIP: {data} not found")
        return 0
    from medclassify.data.cache import build_cache
    from medclassify.data.images import load_for_model
    from medclassify.data.preprocessing import Preprocessing
    from medclassify.data.sources import scan_folder
    from medclassify.data.transforms import augment, get_preset
    import torch

    paths = sorted(r.path for r in scan_folder(data).records if r.split == "train")
    prep = Preprocessing(image_size=args.size, channels=1, mean=[0.5], std=[0.5], normalize="per-image")
    preset, gen = get_preset("robust"), torch.Generator().manual_seed(0)
    order = np.random.default_rng(0).permutation(len(paths))
    root = Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        cache = build_cache(paths, args.size, "pad", 1, root=root)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        cache = build_cache(paths, args.size, "pad", 1, root=root)
        warm_open = time.perf_counter() - t
        rows = cache.rows(paths)

        def epoch_from_cache():
            for b in range(0, len(order), args.batch):
                idx = np.sort(rows[order[b : b + args.batch]])
                prep.normalise(augment(prep.to_tensor(cache.images[idx]), preset, gen))

        def epoch_decoding(limit):
            for b in range(0, limit, args.batch):
                batch = np.stack([load_for_model(paths[i], args.size, "pad", 1) for i in order[b : b + args.batch]])
                prep.normalise(augment(prep.to_tensor(batch), preset, gen))

        t = time.perf_counter()
        epoch_from_cache()
        cached_rate = len(paths) / (time.perf_counter() - t)
        limit = min(len(paths), 1024)
        t = time.perf_counter()
        epoch_decoding(limit)
        decode_rate = limit / (time.perf_counter() - t)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "dataset": args.dataset, "images": len(paths), "image_size": args.size,
        "cache_cold_build_s": round(cold, 2), "cache_cold_build_img_per_s": round(len(paths) / cold, 1),
        "cache_warm_open_s": round(warm_open, 3),
        "batches_from_cache_img_per_s": round(cached_rate, 1),
        "batches_decoding_each_epoch_img_per_s (1 process)": round(decode_rate, 1),
        "epoch_input_time_from_cache_s": round(len(paths) / cached_rate, 1),
        "epoch_input_time_decoding_s": round(len(paths) / decode_rate, 1),
    }
    for k, v in result.items():
        print(f"{k:52s} {v}")
    out = ROOT / "benchmarks" / "results" / "cache_effect.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
