"""Predictor speed: ONNX Runtime single-image latency (decode + preprocess + infer) on real chest
X-rays, batch-32 throughput of ONNX Runtime against PyTorch eager, and export parity.

    python benchmarks/predict_latency.py [--run RUN] [--iterations 200]

Targets (issue 5, efficientnet_lite0 at 224 px, 2 cores): p50 <= 15 ms; batch-32 ONNX >= 1.5x eager;
max |p_onnx - p_torch| <= 1e-4. Writes benchmarks/results/predict_latency.json."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from serving_run import SHARED, exported_run, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--batches", type=int, default=10)
    args = ap.parse_args()
    xrays = sorted(str(p) for p in (SHARED / "chest_xray" / "test").rglob("*.jpeg"))
    if not xrays:
        print(f"SKIP: {SHARED / 'chest_xray'} not found.")
        return 0
    import torch

    from medclassify.inference.predictor import Predictor

    run, origin = exported_run(args.run)
    onnx, eager = Predictor(run, backend="onnx"), Predictor(run, backend="torch")
    print(f"run {run} ({origin}); {onnx.run.model_name} at {onnx.prep.image_size} px; torch threads {torch.get_num_threads()}")
    for p in xrays[:10]:  # warm-up
        onnx.predict_file(p), eager.predict_file(p)
    single = {}
    for name, pred in (("onnx", onnx), ("torch", eager)):
        times = []
        for i in range(args.iterations):
            t = time.perf_counter()
            pred.predict_file(xrays[i % len(xrays)])
            times.append((time.perf_counter() - t) * 1e3)
        single[name] = {"p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
                        "p99_ms": float(np.percentile(times, 99))}
    batch = np.stack([onnx.load(p) for p in xrays[:32]])
    throughput = {}
    for name, pred in (("onnx", onnx), ("torch", eager)):
        pred.probabilities(batch)
        t = time.perf_counter()
        for _ in range(args.batches):
            pred.probabilities(batch)
        throughput[name] = 32 * args.batches / (time.perf_counter() - t)
    arrays = np.stack([onnx.load(p) for p in xrays[:128]])
    diff = float(np.abs(onnx.probabilities(arrays) - eager.probabilities(arrays)).max())
    ratio = throughput["onnx"] / throughput["torch"]
    result = {
        "run": str(run), "origin": origin, "model": onnx.run.model_name, "image_size": onnx.prep.image_size,
        "single_image_latency": single, "batch32_images_per_s": throughput, "batch32_speedup": ratio,
        "parity_max_abs_probability_diff": diff, "parity_images": len(arrays),
        "targets": {"onnx_p50_ms": 15, "batch32_speedup": 1.5, "parity": 1e-4},
        "met": {"onnx_p50": single["onnx"]["p50_ms"] <= 15, "speedup": ratio >= 1.5, "parity": diff <= 1e-4},
    }
    print(f"single image (decode+preprocess+infer): ONNX p50 {single['onnx']['p50_ms']:.1f} ms "
          f"(p99 {single['onnx']['p99_ms']:.1f}); PyTorch p50 {single['torch']['p50_ms']:.1f} ms")
    print(f"batch 32: ONNX {throughput['onnx']:.0f} img/s, PyTorch eager {throughput['torch']:.0f} img/s -> {ratio:.2f}x")
    print(f"parity over {len(arrays)} X-rays: max |p_onnx - p_torch| = {diff:.1e}")
    print(f"written to {write_result('predict_latency', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
