"""Does AdaBN restricted to the first BatchNorm layers (the stem, then the stem to each stage) avoid
the harm full AdaBN does on a split where it lowers accuracy? (issue 16; chest_xray's official test
split.) The run's official test split is halved as in benchmarks/adapt.py; the class-share
re-weighted statistics of one half are computed once, and the BatchNorm layers up to each depth take
them (the deeper ones keep the training statistics) before the other half is scored. `--val` also
halves the validation split.

    python benchmarks/adapt_depth.py RUN [RUN ...] [--val] [--out benchmarks/results/adapt_depth.json]"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from adapt import halves, probabilities, scores, stats_by_name, with_stats
from adapt_estimate import _decoded

ROOT = Path(__file__).resolve().parents[1]
DEPTHS = ["bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "bn2"]  # EfficientNet


def stage_of(name: str) -> str:
    return name if name in ("bn1", "bn2") else ".".join(name.split(".")[:2])


def bench_run(run_path: Path, splits: list[str], seed: int) -> list[dict]:
    from medclassify.run import load_run
    from medclassify.training.adapt import class_weights, resample, train_shares

    run = load_run(run_path)
    prep = run.preprocessing
    model = run.build_model()
    rows = []
    for split in splits:
        y, x = _decoded(run, split)
        p = probabilities(model, x, prep, run.tta)
        a, b = halves(y, seed)
        for on, scored, direction in ((a, b, "A->B"), (b, a, "B->A")):
            t0 = time.perf_counter()
            stats = stats_by_name(model, x[on], resample(class_weights(p[on], train_shares(run)), seed), prep)
            row = {"run": str(run_path), "split": split, "direction": direction, "source": scores(y[scored], p[scored].argmax(1)),
                   "up_to": {}}
            for k, depth in enumerate(DEPTHS):
                keep = set(DEPTHS[: k + 1])
                part = {n: v for n, v in stats.items() if stage_of(n) in keep}
                adapted = with_stats(model, part, 1.0)
                row["up_to"][depth] = scores(y[scored], probabilities(adapted, x[scored], prep, run.tta).argmax(1))
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{Path(run_path).name} {split} {direction} source {100 * row['source']['accuracy']:.1f}  " + " ".join(
                f"{d}:{100 * v['accuracy']:.1f}" for d, v in row["up_to"].items()), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--val", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adapt_depth.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = [r for run in args.runs if (run / "run.json").is_file() for r in bench_run(run, ["test", *(["val"] if args.val else [])], args.seed)]
    if not rows:
        print("no runs measured")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/adapt_depth.py " + " ".join(sys.argv[1:] if argv is None else argv),
                                    "depths": DEPTHS, "rows": rows}, indent=1) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
