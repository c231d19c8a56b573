"""Large datasets: a generated dataset of N JPEG images (256 px, grey, C classes) through the audit,
the decode-once cache and one epoch of training, each stage in its own process, with its peak
resident memory. Run at two sizes (N and --small) to show that peak RSS does not grow with N: the
pixels stay in the memmaps, whose pages are released as they are read or written.

    python benchmarks/scale.py --n 100000 --classes 10 --size 256 --small 10000

The datasets are generated under --root (default: <tmp>/medclassify-scale; never committed) by a
process pool, and reused when already there with the same parameters. Each run uses a fresh cache
folder (the audit fingerprints and the image cache are built, not found), removed at the end.
Training: seed_cnn from random weights at --train-size px (64), 1 epoch, batch 64, augment medical.
Peak RSS: the stage process's own VmHWM, and the largest of its decode workers (RUSAGE_CHILDREN).
Prints the figures and writes benchmarks/results/scale.json."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- generation
def _image(args) -> None:
    path, label, size, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    # A smooth random field, so every image is distinct at the audit's 48 px (no spurious duplicates).
    field = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    img = np.asarray(field, np.float32) * (0.35 / 255) + 0.25
    r = max(2, int(0.05 * size))
    yy, xx = np.mgrid[-3 * r : 3 * r + 1, -3 * r : 3 * r + 1]
    for _ in range(label):  # class k shows k bright blobs
        cy, cx = rng.integers(3 * r, size - 3 * r, 2)
        sd = r * rng.uniform(0.8, 1.2)
        img[cy - 3 * r : cy + 3 * r + 1, cx - 3 * r : cx + 3 * r + 1] += 0.4 * np.exp(-(xx * xx + yy * yy) / (2 * sd * sd))
    img += rng.standard_normal(img.shape, np.float32) * 0.03
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)


def generate(folder: Path, n: int, classes: int, size: int, workers: int) -> float:
    params = {"n": n, "classes": classes, "size": size, "format": "jpeg", "version": 2}
    marker = folder / "params.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    for k in range(classes):
        (folder / f"class_{k}").mkdir(parents=True)
    jobs = [(str(folder / f"class_{i % classes}" / f"img_{i:06d}.jpg"), i % classes, size, i) for i in range(n)]
    with get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(_image, jobs, chunksize=64):
            pass
    marker.write_text(json.dumps(params))  # written last: a killed generation is redone
    return time.perf_counter() - t0


# ---------------------------------------------------------------- stages (each in its own process)
def _peaks() -> dict:
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"peak_rss_mb": round(hwm / 1024, 1),
            "workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def stage(name: str, data: str, out: str, train_size: int, workers: int) -> dict:
    from medclassify.reporting import Reporter

    t0 = time.perf_counter()
    if name == "audit":
        from medclassify.data.audit import audit_dataset, write_audit

        result = audit_dataset(data, workers=workers)
        write_audit(result, Path(out))
        s = result.report["summary"]
        fig = {"audit_s": round(time.perf_counter() - t0, 1), "images": result.report["images"],
               "exact_duplicate_groups": s["exact_duplicate_groups"], "near_duplicate_groups": s["near_duplicate_groups"]}
    elif name == "cache":
        from medclassify.data.cache import build_cache
        from medclassify.data.sources import scan_folder

        paths = sorted(r.path for r in scan_folder(data).records)
        cache = build_cache(paths, train_size, "pad", 1, workers=workers)
        size = sum(f.stat().st_size for f in cache.directory.iterdir())
        fig = {"cache_build_s": round(cache.build_seconds, 1), "decode_img_per_s": round(len(paths) / cache.build_seconds, 1),
               "cache_bytes": size, "cache_errors": len(cache.errors)}
    else:
        from medclassify.config import TrainConfig
        from medclassify.training.fit import train

        config = TrainConfig(data=data, out=out, model="seed_cnn", pretrained="none", image_size=train_size, channels=1,
                             epochs=1, time_budget=None, batch_size=64, augment="medical", workers=workers)
        result = train(config, reporter=Reporter(quiet=True), overwrite=True)
        run = json.loads((result.run_dir / "run.json").read_text())
        hist = (result.run_dir / "history.csv").read_text().splitlines()
        row = dict(zip(hist[0].split(","), hist[1].split(",")))
        fig = {"train_total_s": round(time.perf_counter() - t0, 1), "train_images": run["data"]["counts"]["train"],
               "train_img_per_s": round(float(row["train_images_per_s"]), 1),
               "data_wait_share": round(float(row["data_wait_share"]), 4),
               "epoch_s": round(float(row["seconds"]), 1), "val_accuracy": round(float(row["val_accuracy"]), 4),
               "prepare_s": run["timings"]["prepare_s"]}
        fig["train_images"] = sum(fig["train_images"].values())
    return {**fig, **_peaks()}


def run_stage(name: str, data: Path, out: Path, cache: Path, train_size: int, workers: int) -> dict:
    env = {**os.environ, "MEDCLASSIFY_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--stage", name, "--data", str(data), "--out", str(out),
           "--train-size", str(train_size), "--workers", str(workers)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed on {data}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(n: int, args, root: Path, results: dict) -> dict:
    data = root / f"data-n{n}-c{args.classes}-s{args.size}"
    gen_s = generate(data, n, args.classes, args.size, args.workers)
    work = Path(tempfile.mkdtemp(prefix=f"scale-n{n}-", dir=root))
    out = {"n": n, "generate_s": round(gen_s, 1) if gen_s else "reused"}
    results["runs"].append(out)
    try:
        for name in ("audit", "cache", "train"):
            fig = run_stage(name, data, work / name, work / "cache", args.train_size, args.workers)
            out[name] = fig
            print(f"  n={n} {name}: {json.dumps(fig)}", flush=True)
            save(results, args.out_json)  # a run cut short keeps the stages it finished
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000, help="also run this N, to compare peak RSS (0: skip)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "medclassify-scale"))
    ap.add_argument("--out-json", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.data, args.out, args.train_size, args.workers)))
        return 0
    if not 2 <= args.classes <= 10:
        ap.error("--classes must be 2 to 10")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    sizes = sorted({n for n in (args.small, args.n) if n})
    results = {"command": " ".join(["python", "benchmarks/scale.py"] + sys.argv[1:]), "cores": os.cpu_count(),
               "classes": args.classes, "image_px": args.size, "format": "jpeg grey",
               "training": f"seed_cnn, random init, {args.train_size} px, 1 epoch, batch 64, augment medical", "runs": []}
    for n in sizes:
        print(f"N = {n}", flush=True)
        measure(n, args, root, results)
    if len(results["runs"]) == 2:
        a, b = results["runs"]
        results["peak_rss_growth_mb"] = {s: round(b[s]["peak_rss_mb"] - a[s]["peak_rss_mb"], 1) for s in ("audit", "cache", "train")}
    save(results, args.out_json)
    print(json.dumps(results, indent=1))
    return 0


def save(results: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
