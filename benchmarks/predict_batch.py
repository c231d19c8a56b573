"""Batch prediction end to end: `medclassify predict` over the 624 official chest X-ray test
images (file listing, decode pipeline, ONNX Runtime, CSV), timed from the call to the CSV on disk.

    python benchmarks/predict_batch.py [--run RUN]

Target (issue 5): >= 100 images/s on 2 cores. Writes benchmarks/results/predict_batch.json."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from serving_run import SHARED, ensure_backend, exported_run, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tta", action="store_true", help="average each image with its mirror (default: off)")
    args = ap.parse_args()
    test = SHARED / "chest_xray" / "test"
    if not test.is_dir():
        print(f"SKIP: {test} not found.")
        return 0
    from medclassify.config import PredictOptions
    from medclassify.inference.predictor import predict_files

    run, origin = exported_run(args.run)
    ensure_backend(run, args.backend)
    options = PredictOptions(backend=args.backend, tta=args.tta)
    out = Path(tempfile.mkdtemp()) / "preds.csv"
    predict_files(run, [test], out, options=options)  # warm the page cache and the imports
    t = time.perf_counter()
    preds = predict_files(run, [test], out, options=options)
    seconds = time.perf_counter() - t
    rate = len(preds) / seconds
    failed = sum(1 for p in preds if p.error)
    # The folder names the true class: the accuracy shows what a faster backend costs, if anything.
    scored = [p for p in preds if not p.error]
    accuracy = sum(p.label == Path(p.path).parent.name for p in scored) / max(1, len(scored))
    result = {"run": str(run), "origin": origin, "images": len(preds), "unreadable": failed, "seconds": seconds,
              "images_per_s": rate, "backend": args.backend, "tta": args.tta, "test_accuracy": accuracy, "target_images_per_s": 100, "met": rate >= 100,
              "rows_in_csv": sum(1 for _ in open(out)) - 1}
    print(f"{len(preds)} images in {seconds:.2f} s = {rate:.0f} images/s end to end ({failed} unreadable), "
          f"accuracy {100 * accuracy:.1f}% ({args.backend}); run {origin}")
    name = "predict_batch" + ("" if args.backend in ("auto", "onnx") else "-" + args.backend)
    print(f"written to {write_result(name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
