"""Explanation and report speed for efficientnet_lite0 at 224 px on the chest X-ray data.

    python benchmarks/explain_speed.py [--run RUN] [--images 20] [--lime-images 2] [--threads N] [--lime-only]

Targets (2 CPU cores): Grad-CAM <= 150 ms per image, LIME <= 15 s per image at 1,000 samples, the
full report for the 624-image test set <= 60 s.

Without --run, a run directory for efficientnet_lite0 at 224 px (1 channel, ImageNet weights, an
untrained 2-class head) is assembled on ../shared/datasets/chest_xray: the official test split and
300 training images as validation. Speed does not depend on the weights' values, so no training is
needed. With --run (e.g. a trained chest_xray run), that run is timed instead. The report is timed
twice: with a cold image cache (decoding every JPEG) and warm; both re-evaluate the model (--fresh).
--threads sets torch's intra-op threads (default: torch's choice, one per core). On a shared,
oversubscribed machine one thread can be much faster than two (threads wait for each other), so the
figures of both are worth recording. Writes benchmarks/results/explain_speed[-threadsN].json.

--lime-only times only LIME per image, through PyTorch and through ONNX Runtime (the run is exported
first; `medclassify explain --method lime` takes the ONNX path on an exported run), and writes
benchmarks/results/explain_speed-lime.json."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "datasets" / "chest_xray"


def assemble_run(out: Path, size: int = 224, n_val: int = 300, seed: int = 0) -> Path:
    import datetime as dt

    from medclassify import __version__
    from medclassify.config import TrainConfig
    from medclassify.data.preprocessing import Preprocessing
    from medclassify.data.sources import Record, scan_folder
    from medclassify.models import create_model, get_spec
    from medclassify.run import FORMAT_VERSION, save_weights, write_json, write_split_csv

    index = scan_folder(DATA)
    rng = np.random.default_rng(seed)
    train = [r for r in index.records if r.split == "train"]
    val_idx = set(rng.choice(len(train), n_val, replace=False).tolist())
    records = [Record(r.path, r.label, "val" if i in val_idx else "train", r.patient) for i, r in enumerate(train)]
    records += [r for r in index.records if r.split == "test"]
    classes = sorted({r.label for r in records})
    spec = get_spec("efficientnet_lite0")
    prep = Preprocessing(image_size=size, channels=1, mean=[float(np.mean(spec.mean))], std=[float(np.mean(spec.std))],
                         normalize="per-image")
    config = TrainConfig(data=str(DATA), out=str(out), model="efficientnet_lite0", image_size=size, epochs=1)
    out.mkdir(parents=True, exist_ok=True)
    write_split_csv(out / "split.csv", records)
    model = create_model("efficientnet_lite0", len(classes), 1, pretrained="imagenet")
    save_weights(model, out / "model.safetensors")
    counts: dict = {}
    for r in records:
        counts.setdefault(r.split, {}).setdefault(r.label, 0)
        counts[r.split][r.label] += 1
    write_json(out / "run.json", {
        "format_version": FORMAT_VERSION, "medclassify_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "config": config.model_dump(),
        "pretrained": "imagenet", "classes": classes, "preprocessing": prep.model_dump(),
        "data": {"root": str(DATA), "counts": counts}, "best_epoch": None, "epochs_run": 0,
        "warnings": ["benchmark run: ImageNet backbone with an untrained head, for timing only"]})
    return out


def lime_comparison(run_dir: Path, images: list, args) -> dict:
    """LIME per image with its forward passes through PyTorch, then through ONNX Runtime (the run is
    exported first), both with the run's TTA choice and temperature (Explainer.for_run)."""
    from medclassify.explain import Lime
    from medclassify.inference.export import export_onnx
    from medclassify.inference.predictor import Predictor

    def timed(lime) -> dict:
        lime.explain(images[0])  # warm-up (allocator, ONNX Runtime's first run)
        wall, cpu = [], []
        for img in images[: args.lime_images]:
            t, c = time.perf_counter(), time.process_time()
            lime.explain(img)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return {"samples": args.lime_samples, "mean": float(np.mean(wall)), "each": wall,
                "cpu_seconds_mean": float(np.mean(cpu)), "tta": lime.tta, "target": 15}

    torch_lime = Lime.for_run(run_dir, predictor=Predictor(run_dir, backend="torch"), samples=args.lime_samples)
    out = {"lime_s": {**timed(torch_lime), "bf16": torch_lime.bf16}}
    print(f"LIME ({args.lime_samples} samples, PyTorch, bf16 {torch_lime.bf16}): {out['lime_s']['mean']:.2f} s per image "
          f"({out['lime_s']['cpu_seconds_mean']:.2f} CPU-seconds)")
    export_onnx(run_dir)
    onnx_lime = Lime.for_run(run_dir, samples=args.lime_samples)  # what `medclassify explain --method lime` builds
    backend = onnx_lime.onnx.backend if onnx_lime.onnx is not None else "torch"
    out["lime_onnx_s"] = {**timed(onnx_lime), "backend": backend}
    print(f"LIME ({args.lime_samples} samples, {backend}): {out['lime_onnx_s']['mean']:.2f} s per image "
          f"({out['lime_onnx_s']['cpu_seconds_mean']:.2f} CPU-seconds)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--lime-images", type=int, default=2)
    ap.add_argument("--lime-samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lime-only", action="store_true")
    args = ap.parse_args()
    if args.run is None and not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from medclassify.reports.report import build_report
    from medclassify.explain import GradCAM
    from medclassify.inference.predictor import Predictor
    from medclassify.run import load_run

    work = Path(tempfile.mkdtemp(prefix="explain-speed-"))
    os.environ.setdefault("MEDCLASSIFY_CACHE", str(work / "cache"))  # cold cache unless the caller sets one
    run_dir = args.run or assemble_run(work / "run")
    run = load_run(run_dir)
    predictor = Predictor(run)
    test = [r.path for r in run.records("test")]
    images = [predictor.load(p) for p in test[: args.images]]
    result = {"run": str(run_dir), "model": run.model_name, "image_size": run.preprocessing.image_size,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if args.lime_only:
        result.update(lime_comparison(run_dir, images, args), load_avg_end=os.getloadavg())
        out = ROOT / "benchmarks" / "results" / "explain_speed-lime.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        return 0

    cam = GradCAM(predictor.model, predictor.prep)
    cam.explain(images[0])  # warm-up (target-layer search, allocator)
    times = []
    for img in images:
        t = time.perf_counter()
        cam.explain(img)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    for p in test[: args.images]:
        cam.explain(predictor.load(p))
    with_decode = (time.perf_counter() - t) / args.images
    result["gradcam_ms"] = {"mean": 1000 * float(np.mean(times)), "median": 1000 * float(np.median(times)),
                            "with_jpeg_decode_mean": 1000 * with_decode, "target": 150}
    print(f"Grad-CAM: mean {result['gradcam_ms']['mean']:.0f} ms, median {result['gradcam_ms']['median']:.0f} ms per image "
          f"({1000 * with_decode:.0f} ms with JPEG decoding); target <= 150 ms")

    result.update(lime_comparison(run_dir, images, args))

    report_s = []
    for label in ("cold cache", "warm cache"):
        t = time.perf_counter()
        build_report(run_dir, fresh=True, out=work / f"report-{label.split()[0]}.html")
        report_s.append(time.perf_counter() - t)
        print(f"report ({len(test)} test images, {label}): {report_s[-1]:.1f} s; target <= 60 s")
    result["report_s"] = {"test_images": len(test), "cold_cache": report_s[0], "warm_cache": report_s[1], "target": 60}
    result["load_avg_end"] = os.getloadavg()
    result["passed"] = (result["gradcam_ms"]["mean"] <= 150 and result["lime_s"]["mean"] <= 15
                        and max(report_s) <= 60)
    print(f"load average {result['load_avg_start']} -> {result['load_avg_end']} on {os.cpu_count()} cores")
    out = ROOT / "benchmarks" / "results" / f"explain_speed{f'-threads{args.threads}' if args.threads else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
