"""Accuracy benchmark: the default recipe of `medclassify train DATA --out RUN` (a fixed number of
epochs, no time budget; or overrides) on each shared dataset's train split, once per seed, each run
evaluated once on the dataset's official test split. A single lucky run is not a result: the table
gives the mean and the spread (sample standard deviation, and max - min) over the seeds.

    python benchmarks/accuracy.py                                  # all datasets, default recipe, seeds 0,1,2
    python benchmarks/accuracy.py --datasets chest_xray --seeds 0,1,2 --set image_size=160
    python benchmarks/accuracy.py --datasets alzheimer_mri --seeds 0 --set epochs=1 --set image_size=64   # smoke

Prints a table and writes benchmarks/results/accuracy.json (one entry per dataset and seed)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
DATASETS = ["chest_xray", "alzheimer_mri", "brain_tumor_mri"]
TARGETS = {
    "chest_xray": {"accuracy": 0.95, "auc": 0.99},
    "alzheimer_mri": {"accuracy": 0.90, "macro_f1": 0.85},
    "brain_tumor_mri": {"accuracy": 0.85},
}


def test_fields(test: dict) -> dict:
    return {"test_accuracy": round(test["accuracy"], 4), "test_balanced_accuracy": round(test["balanced_accuracy"], 4),
            "test_macro_f1": round(test["macro_f1"], 4), "test_auc": round(test["auc"], 4) if test["auc"] is not None else None,
            "test_recall": {c: round(m["recall"], 3) for c, m in test["per_class"].items()}}


def reevaluated_row(name: str, args, previous: list[dict], out: Path, evaluate) -> dict:
    import shutil

    from medclassify.reporting import Reporter

    source = Path(args.runs) / f"{name}-{args.source_suffix or args.reevaluate}"
    old = [r for r in previous if r["dataset"] == name and r["tag"] == args.reevaluate]
    if not (source / "run.json").is_file() or not old:
        raise SystemExit(f"--reevaluate {args.reevaluate}: no run {source} or no row for it in {args.json}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("metrics"))
    info = json.loads((out / "run.json").read_text())
    for key in ("tta", "calibration", "operating_point"):  # decided again by the evaluation under test
        info.pop(key, None)
    (out / "run.json").write_text(json.dumps(info, indent=2))
    test = evaluate(out, split="test", reporter=Reporter())
    tta = json.loads((out / "run.json").read_text()).get("tta")
    row = {**old[0], "tag": args.tag, "reevaluated_from": args.reevaluate, "tta": tta, **test_fields(test)}
    row["targets_met"] = {k: (row[f"test_{k}"] or 0) >= v for k, v in row["targets"].items()}
    return row


def refreshed_row(name: str, seed: int, args, previous: list[dict], out: Path, evaluate) -> dict:
    """A run of FROM_TAG (trained before the recipe re-estimated the BatchNorm statistics of averaged
    weights) finished as the current recipe finishes it: the same refresh functions on the same
    training images, then TTA decided and the guard fitted again, then the test split. Training
    itself is unchanged by the refresh, so this equals training again (checked once by training a
    seed afresh and comparing model.safetensors byte for byte: README, Benchmarks)."""
    import copy
    import shutil

    import numpy as np
    import torch

    from medclassify.data.cache import build_cache
    from medclassify.ood import fit_guard
    from medclassify.reporting import Reporter
    from medclassify.run import load_run, save_weights
    from medclassify.training.batchnorm import refresh_batchnorm, refresh_decision, refresh_rows
    from medclassify.training.validation import choose_tta

    source = Path(args.runs) / f"{name}-{args.bn_refresh}-s{seed}"
    old = [r for r in previous if r["dataset"] == name and r["tag"] == args.bn_refresh and r.get("seed") == seed]
    if not (source / "run.json").is_file() or not old:
        raise SystemExit(f"--bn-refresh {args.bn_refresh}: no run {source} or no row for seed {seed} in {args.json}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("metrics", "ood.safetensors"))
    info = json.loads((out / "run.json").read_text())
    source_info = dict(info)
    for key in ("tta", "calibration", "operating_point", "ood"):
        info.pop(key, None)
    (out / "run.json").write_text(json.dumps(info, indent=2))
    run, reporter = load_run(out), Reporter()
    selection, config, prep = info["selection"], info["config"], run.preprocessing
    if selection["select"] != "average" or len(selection["epochs"]) < 2:
        raise SystemExit(f"{source}: its weights are not an average ({selection}); the refresh does not apply")
    cache = build_cache(sorted(r.path for r in run.records()), prep.image_size, prep.resize, prep.channels)
    paths = refresh_rows([r.path for r in run.records("train")], args.bn_refresh_images)
    model = run.build_model().to(memory_format=torch.channels_last)  # as the trainer holds it: the same float sums
    refreshed = copy.deepcopy(model)
    refresh_batchnorm(refreshed, cache.reader()[cache.rows(paths)], prep)
    val = run.records("val")
    labels = np.array([run.classes.index(r.label) for r in val], dtype=np.int64)
    decision = refresh_decision(model, refreshed, cache.reader(), cache.rows([r.path for r in val]), labels, prep, run.classes)
    run.update(selection={**selection, "bn_refresh": {"images": len(paths), **decision}})
    if not decision["kept"]:  # the source's weights, byte for byte: its TTA, guard and test scores stand
        for key in ("tta", "ood"):
            if key in source_info:
                run.update(**{key: source_info[key]})
        for name in ("metrics", "ood.safetensors"):
            if (source / name).is_dir():
                shutil.copytree(source / name, out / name)
            elif (source / name).is_file():
                shutil.copy2(source / name, out / name)
        return {**old[0], "tag": args.tag, "refreshed_from": args.bn_refresh, "bn_refresh": decision,
                "selection": f"{old[0]['selection']}, BatchNorm refresh not kept (val balanced accuracy "
                             f"{decision['val_balanced_accuracy']})", "config": {**old[0]["config"], "bn_refresh_images": args.bn_refresh_images}}
    save_weights(refreshed, out / "model.safetensors", metadata={"epoch": str(selection["epoch"])})
    choose_tta(run, reporter, cache=cache)
    fit_guard(run, reporter, cache=cache, quantile=config.get("ood_quantile", 0.95), seed=config["seed"])
    val = run.metrics("val")
    test = evaluate(out, split="test", reporter=Reporter(quiet=True))
    row = {**old[0], "tag": args.tag, "refreshed_from": args.bn_refresh, "tta": test["tta"],
           "selection": f"{old[0]['selection']}, BatchNorm refreshed on {len(paths)} training images "
                        f"({'kept' if decision['kept'] else 'not kept'}: val balanced accuracy {decision['val_balanced_accuracy']})",
           "bn_refresh": decision,
           "val_accuracy": round(val["accuracy"], 4), "val_balanced_accuracy": round(val["balanced_accuracy"], 4),
           **test_fields(test)}
    row["config"] = {**old[0]["config"], "bn_refresh_images": args.bn_refresh_images}
    row["targets_met"] = {k: (row[f"test_{k}"] or 0) >= v for k, v in row["targets"].items()}
    return row


def spread_table(results: list[dict]) -> list[str]:
    """Mean ± sample standard deviation (and max - min) of the test metrics over the seeds, per dataset."""
    lines = [f"{'dataset':16s} {'seeds':>5s} {'test acc':>16s} {'range':>6s} {'bal acc':>16s} {'macro F1':>16s} {'AUC':>16s}"]
    for name in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == name]

        def cell(key: str) -> str:
            v = [100 * r[key] for r in rows if r.get(key) is not None]
            if not v:
                return f"{'n/a':>16s}"
            return f"{statistics.mean(v):7.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:4.1f}  "

        acc = [100 * r["test_accuracy"] for r in rows]
        lines.append(f"{name:16s} {len(rows):5d} {cell('test_accuracy')} {max(acc) - min(acc):6.1f} "
                     f"{cell('test_balanced_accuracy')} {cell('test_macro_f1')} {cell('test_auc')}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=DATASETS)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; one run per dataset and seed")
    ap.add_argument("--shared", type=Path, default=SHARED, help="folder holding the datasets")
    ap.add_argument("--set", action="append", default=[], help="override a TrainConfig field, e.g. image_size=160")
    ap.add_argument("--runs", default="/tmp/medclassify-bench-runs", help="where the runs are written")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "accuracy.json"))
    ap.add_argument("--tag", default="default", help="label for this recipe in the JSON")
    ap.add_argument("--reevaluate", metavar="FROM_TAG",
                    help="train nothing: copy the runs of FROM_TAG and evaluate them again with the current code "
                         "(e.g. after a change to evaluation); training figures are carried over from FROM_TAG's rows")
    ap.add_argument("--bn-refresh", metavar="FROM_TAG",
                    help="train nothing: finish the runs RUNS/<dataset>-FROM_TAG-s<seed>, trained before the recipe "
                         "re-estimated BatchNorm statistics after averaging, as the current recipe does")
    ap.add_argument("--bn-refresh-images", type=int, help="with --bn-refresh: TrainConfig.bn_refresh_images (default: its default)")
    ap.add_argument("--source-suffix", help="with --reevaluate: the runs are RUNS/<dataset>-SUFFIX (default: FROM_TAG)")
    args = ap.parse_args()
    if not args.shared.is_dir():
        print(f"SKIP: shared datasets not found at {args.shared}; nothing to benchmark.")
        return 0
    from medclassify.config import TrainConfig, parse_overrides
    from medclassify.evaluation.evaluate import evaluate
    from medclassify.reporting import Reporter
    from medclassify.training.fit import train

    overrides = parse_overrides(args.set)  # the CLI's --set rules: typed, a unit on time_budget
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.bn_refresh_images is None:
        args.bn_refresh_images = TrainConfig.model_fields["bn_refresh_images"].default
    results = []
    previous = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else []
    for name, seed in [(n, s) for n in args.datasets for s in seeds]:
        data = args.shared / name
        if not data.is_dir():
            print(f"SKIP {name}: {data} not found")
            continue
        out = Path(args.runs) / f"{name}-{args.tag}"
        if args.reevaluate:
            results.append(reevaluated_row(name, args, previous, out, evaluate))
            print(json.dumps(results[-1]), flush=True)
            continue
        out = Path(args.runs) / f"{name}-{args.tag}-s{seed}"
        if args.bn_refresh:
            results.append(refreshed_row(name, seed, args, previous, out, evaluate))
            print(json.dumps(results[-1]), flush=True)
            continue
        config = TrainConfig(data=str(data), out=str(out), **{"seed": seed, **overrides})
        t0 = time.perf_counter()
        result = train(config, reporter=Reporter(), overwrite=True)
        wall = time.perf_counter() - t0
        test = evaluate(result.run_dir, split="test", reporter=Reporter(quiet=True))
        info = json.loads((result.run_dir / "run.json").read_text())
        hist = (result.run_dir / "history.csv").read_text().splitlines()
        rates = [float(line.split(",")[-1]) for line in hist[1:]]
        row = {
            "dataset": name, "tag": args.tag, "seed": config.seed, "tta": test["tta"], "model": config.model, "image_size": config.image_size,
            "epochs": result.epochs_run, "best_epoch": result.best_epoch, "selection": result.selection, "train_wall_s": round(result.train_seconds, 1),
            "total_wall_s": round(wall, 1), "cache_build_s": info["timings"]["cache_build_s"],
            "train_images_per_s": round(sum(rates) / len(rates), 1) if rates else None,
            "epoch_seconds": [round(float(line.split(",")[-2]), 1) for line in hist[1:]],
            "val_accuracy": round(result.val_metrics["accuracy"], 4), "val_balanced_accuracy": round(result.val_metrics["balanced_accuracy"], 4),
            **test_fields(test),
            "config": {k: v for k, v in config.model_dump().items() if k not in ("data", "out")},
            "targets": TARGETS.get(name, {}),
        }
        row["targets_met"] = {k: (row[f"test_{k}"] or 0) >= v for k, v in row["targets"].items()}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'dataset':16s} {'seed':>4s} {'model':20s} {'px':>4s} {'ep':>3s} {'train s':>8s} {'img/s':>6s} {'val acc':>8s} "
          f"{'test acc':>8s} {'bal acc':>8s} {'macroF1':>8s} {'AUC':>7s}")
    for r in results:
        print(f"{r['dataset']:16s} {r.get('seed', '-')!s:>4s} {r['model']:20s} {r['image_size']:4d} {r['epochs']:3d} {r['train_wall_s']:8.0f} "
              f"{r['train_images_per_s'] or 0:6.1f} {r['val_accuracy']:8.4f} {r['test_accuracy']:8.4f} "
              f"{r['test_balanced_accuracy']:8.4f} {r['test_macro_f1']:8.4f} {r['test_auc'] or 0:7.4f}")
    print("\nover seeds (mean ± sd, range = max - min, points):")
    print("\n".join(spread_table(results)))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["dataset"], r["tag"], r.get("seed")) for r in results}
    keep = [p for p in previous if (p["dataset"], p["tag"], p.get("seed")) not in done]
    out.write_text(json.dumps(keep + results, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
