"""The brain-MRI cascade end to end: `evaluate-cascade` over the combined official test splits of
alzheimer_mri and brain_tumor_mri (1,673 images, 7 final labels), after `train-cascade` when the
stage runs are missing.

    python benchmarks/cascade.py [--cascade examples/brain_mri/cascade.yaml] [--train]

The notebook app reached 70% end to end (stages 80%, 99.9%, 79%, 76%). Writes
benchmarks/results/cascade.json."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from serving_run import ROOT, SHARED, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cascade", default=str(ROOT / "examples" / "brain_mri" / "cascade.yaml"))
    ap.add_argument("--train", action="store_true", help="train the stages whose runs are missing first")
    args = ap.parse_args()
    if not (SHARED / "alzheimer_mri").is_dir() or not (SHARED / "brain_tumor_mri").is_dir():
        print(f"SKIP: alzheimer_mri / brain_tumor_mri not found under {SHARED}.")
        return 0
    from medclassify.cascade import cascade_summary, evaluate_cascade, read_cascade, train_cascade
    from medclassify.reporting import Reporter

    if args.train:
        train_cascade(args.cascade, reporter=Reporter())
    t = time.perf_counter()
    metrics = evaluate_cascade(args.cascade, reporter=Reporter())
    seconds = time.perf_counter() - t
    spec = read_cascade(args.cascade)
    from medclassify.run import load_run

    stages = {n: {"model": load_run(s.run).model_name, "image_size": load_run(s.run).preprocessing.image_size,
                  "epochs_run": load_run(s.run).info.get("epochs_run"), "train_s": load_run(s.run).info.get("timings", {}).get("train_s")}
              for n, s in spec.stages.items()}
    result = {"cascade": str(Path(args.cascade).resolve()), "n": metrics["n"], "accuracy": metrics["accuracy"],
              "balanced_accuracy": metrics["balanced_accuracy"], "macro_f1": metrics["macro_f1"],
              "classes": metrics["classes"], "confusion_matrix": metrics["confusion_matrix"],
              "per_class": metrics["per_class"], "stage_accuracy": metrics["stages"], "stages": stages,
              "evaluate_seconds": seconds, "notebook": {"end_to_end": 0.70, "stages": [0.80, 0.999, 0.79, 0.76]}}
    print(cascade_summary(metrics))
    print(f"written to {write_result('cascade', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
