"""Which weights should ship? Re-scores, on a held-out test split, the candidates of several seeded
runs of one recipe: the last epoch of the completed schedule, the average of the last k epochs'
weights, and the best epoch by validation balanced accuracy, AUC or loss. The default `--select`
should be the candidate with a good mean and the smallest spread across seeds.

    python benchmarks/selection.py --per-class 100 --test-per-class 60 --size 96 --epochs 5 --seeds 0,1,2

Works on a class-balanced subset of ../shared/datasets/alzheimer_mri (copied to --work); writes
benchmarks/results/selection.json."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def subset(src: Path, dst: Path, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    if dst.is_dir():
        return dst
    rng = random.Random(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.is_file())
            rng.shuffle(files)
            (dst / split / cls.name).mkdir(parents=True, exist_ok=True)
            for f in files[:n]:
                shutil.copy2(f, dst / split / cls.name / f.name)
    return dst


def candidates(epochs: list[tuple[int, dict, dict]], k: int) -> dict[str, tuple[str, dict]]:
    """name -> (which epoch(s), state dict) from the per-epoch (epoch, val metrics, state) records."""
    from medclassify.evaluation.metrics import monitor_value

    out = {"last": (str(epochs[-1][0]), epochs[-1][2])}
    tail = epochs[-k:]
    avg = {}
    for name, t in tail[-1][2].items():
        avg[name] = (sum(s[name].double() for _, _, s in tail) / len(tail)).to(t.dtype) if t.is_floating_point() else t
    out[f"average-last-{k}"] = (f"{tail[0][0]}-{tail[-1][0]}", avg)
    for metric in ("balanced_accuracy", "auc", "loss"):
        e, _, s = max(epochs, key=lambda r: monitor_value(r[1], metric))  # first best wins ties, as in training
        out[f"best-{metric}"] = (str(e), s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="alzheimer_mri")
    ap.add_argument("--shared", type=Path, default=SHARED, help="folder holding the datasets")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--average", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medclassify-selection"))
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "selection.json")  # measured: selection-*.json
    args = ap.parse_args()
    src = args.shared / args.dataset
    if not src.is_dir():
        print(f"SKIP: {src} not found")
        return 0
    import numpy as np
    import torch

    from medclassify.config import TrainConfig
    from medclassify.data.listing import list_image_files
    from medclassify.evaluation.metrics import compute_metrics
    from medclassify.inference.predictor import Predictor
    from medclassify.reporting import Reporter
    from medclassify.training import callbacks
    from medclassify.training.fit import train

    torch.set_num_threads(args.threads)
    data = subset(src, args.work / f"data-{args.per_class}-{args.test_per_class}", args.per_class, args.test_per_class)
    records: list[tuple[int, dict, dict]] = []
    original = callbacks.BestCheckpoint.update

    def recording(self, model, epoch, metrics):  # every epoch's weights and validation metrics
        records.append((epoch, dict(metrics), {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))
        return original(self, model, epoch, metrics)

    callbacks.BestCheckpoint.update = recording
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        records.clear()
        config = TrainConfig(data=str(data), out=str(args.work / f"run-{seed}"), model=args.model, image_size=args.size,
                             epochs=args.epochs, seed=seed, threads=args.threads, workers=1, select="last")
        t0 = time.perf_counter()
        run = train(config, reporter=Reporter(quiet=True), overwrite=True).run_dir
        train_s = time.perf_counter() - t0
        pred = Predictor(run, backend="torch", tta=False)
        pred.temperature = 1.0
        test = sorted(list_image_files(data / "test")[0])
        labels = np.array([pred.classes.index(Path(p).parent.name) for p in test])
        arrays = np.stack([pred.load(p) for p in test])
        for name, (which, state) in candidates(records, args.average).items():
            pred.model.load_state_dict(state)
            probs = np.concatenate([pred.probabilities(arrays[i:i + 64]) for i in range(0, len(arrays), 64)])
            m = compute_metrics(labels, probs, pred.classes)
            rows.append({"seed": seed, "candidate": name, "epochs": which, "test_accuracy": round(m["accuracy"], 4),
                         "test_balanced_accuracy": round(m["balanced_accuracy"], 4),
                         "test_auc": None if m["auc"] is None else round(m["auc"], 4), "train_s": round(train_s, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'candidate':24s} {'test acc mean ± sd':>20s} {'bal acc mean ± sd':>20s}  per seed (acc)")
    summary = {}
    for name in dict.fromkeys(r["candidate"] for r in rows):
        acc = [r["test_accuracy"] for r in rows if r["candidate"] == name]
        bal = [r["test_balanced_accuracy"] for r in rows if r["candidate"] == name]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        summary[name] = {"acc_mean": statistics.mean(acc), "acc_sd": sd(acc), "bal_mean": statistics.mean(bal), "bal_sd": sd(bal)}
        print(f"{name:24s} {100 * statistics.mean(acc):11.1f} ± {100 * sd(acc):4.1f}   {100 * statistics.mean(bal):11.1f} ± "
              f"{100 * sd(bal):4.1f}   {' '.join(f'{100 * a:.1f}' for a in acc)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                     "summary": summary}, indent=2))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
