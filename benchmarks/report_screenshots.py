"""Screenshots of what a person sees for a real chest X-ray run: report.html, audit.html, eda.html,
compare.html, and Grad-CAM / LIME / activations pictures of one X-ray; plus the superpixel
connectivity check on real X-rays (every LIME superpixel must be one connected piece).

    python benchmarks/report_screenshots.py [--per-class 150 --test-per-class 60 --size 128 --epochs 4]
    python benchmarks/report_screenshots.py --run RUN_DIR     # reuse a trained chest X-ray run

Trains a small run on a class-balanced subset of ../shared/datasets/chest_xray (copied under --work),
then writes benchmarks/results/screens/*.png (not committed: see .gitignore) and
benchmarks/results/report_screenshots.json. Needs /usr/bin/chromium and playwright for the pages."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# ../shared next to the checkout (or next to its parent, for a git worktree under wt/)
DATA = next((p / "shared" / "datasets" / "chest_xray" for p in (ROOT.parent, ROOT.parent.parent)
             if (p / "shared" / "datasets" / "chest_xray").is_dir()), ROOT.parent / "shared" / "datasets" / "chest_xray")
CHROMIUM = Path("/usr/bin/chromium")


def subset(src: Path, dest: Path, per_class: int, test_per_class: int, seed: int) -> Path:
    rng = random.Random(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for folder in sorted((src / split).iterdir()):
            files = sorted(folder.iterdir())
            (dest / split / folder.name).mkdir(parents=True, exist_ok=True)
            for f in rng.sample(files, min(n, len(files))):
                shutil.copy2(f, dest / split / folder.name / f.name)
    return dest


def train_run(data: Path, out: Path, model: str, size: int, epochs: int, seed: int) -> Path:
    from medclassify.config import TrainConfig
    from medclassify.reporting import Reporter
    from medclassify.training.fit import train

    config = TrainConfig(data=str(data), out=str(out), model=model, image_size=size, epochs=epochs, time_budget=None,
                         batch_size=32, early_stopping=0, seed=seed, workers=2, threads=2)
    return train(config, reporter=Reporter(quiet=True), overwrite=True).run_dir


def screenshot(pages: dict[str, Path], dest: Path) -> dict[str, str]:
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is absent: no page screenshots")
        return {}
    from playwright.sync_api import sync_playwright

    shots = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            for name, path in pages.items():
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.goto(path.as_uri(), wait_until="load")
                shot = dest / f"{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                page.screenshot(path=str(dest / f"{name}-top.png"))  # the first screen, as a reader lands
                shots[name] = str(shot.relative_to(ROOT))
                page.close()
        finally:
            browser.close()
    return shots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="an existing chest X-ray run to use instead of training one")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medclassify-screens"))
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--model", default="seed_cnn")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from medclassify.cli import main as cli
    from medclassify.explain.superpixels import components_per_segment, slic
    from medclassify.inference.predictor import Predictor
    from medclassify.io import write_json
    from medclassify.run import load_run

    if not DATA.is_dir():
        print(f"{DATA} is absent")
        return 2
    dest = ROOT / "benchmarks" / "results" / "screens"
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shutil.rmtree(args.work / "data", ignore_errors=True)
    data = subset(DATA, args.work / "data", args.per_class, args.test_per_class, args.seed)
    run = args.run or train_run(data, args.work / "run", args.model, args.size, args.epochs, args.seed)
    other = train_run(data, args.work / "run-1epoch", args.model, args.size, 1, args.seed + 1)
    train_s = time.perf_counter() - t0
    assert cli(["report", str(run), "-q"]) == 0
    cli(["audit", str(data), "--out", str(args.work / "audit"), "-q"])
    assert cli(["eda", str(data), "--out", str(args.work / "eda"), "-q"]) == 0
    assert cli(["compare", str(run), str(other), "--out", str(args.work / "compare.html"), "-q"]) == 0

    xray = sorted((data / "test" / "PNEUMONIA").iterdir())[0]
    explained = {}
    for method in ("gradcam", "lime", "activations"):
        out = dest / f"explain-{method}.png"
        extra = ["--samples", "300"] if method == "lime" else []
        assert cli(["explain", str(run), str(xray), "--method", method, "--out", str(out), "-q", *extra]) == 0
        explained[method] = str(out.relative_to(ROOT))

    # the same on an original-resolution X-ray (a training image of the full dataset, only looked at)
    fullres = DATA.parent / "chest_xray_fullres_sample" / "PNEUMONIA"
    if fullres.is_dir():
        big = sorted(fullres.iterdir())[0]
        for method in ("gradcam", "lime"):
            out = dest / f"explain-{method}-fullres.png"
            extra = ["--samples", "300"] if method == "lime" else []
            assert cli(["explain", str(run), str(big), "--method", method, "--out", str(out), "-q", *extra]) == 0
            explained[f"{method}-fullres"] = str(out.relative_to(ROOT))

    # superpixels on real X-rays at the model's size and at 224 px
    predictor = Predictor(load_run(run))
    pieces = []
    for path in sorted((data / "test" / "NORMAL").iterdir())[:10] + sorted((data / "test" / "PNEUMONIA").iterdir())[:10]:
        from medclassify.data.images import load_for_model

        for size in (args.size, 224):
            image = load_for_model(path, size, predictor.prep.resize, 1)
            pieces.append(int(components_per_segment(slic(image, 50)).max()))

    shots = screenshot({"report": run / "report.html", "audit": args.work / "audit" / "audit.html",
                        "eda": args.work / "eda" / "eda.html", "compare": args.work / "compare.html"}, dest)
    metrics = load_run(run).metrics("test")
    result = {"run": str(run), "data": str(data), "train_images_per_class": args.per_class,
              "test_images_per_class": args.test_per_class, "model": args.model, "image_size": args.size,
              "epochs": args.epochs, "train_and_prepare_s": round(train_s, 1),
              "test": {k: metrics.get(k) for k in ("accuracy", "sensitivity", "specificity", "auc")},
              "test_ci": metrics.get("ci"), "warnings": [w["code"] for w in metrics.get("warnings", [])],
              "screenshots": shots, "explanations": explained, "explained_image": str(xray),
              "superpixels": {"images": len(pieces), "max_pieces_per_superpixel": max(pieces), "passed": max(pieces) == 1}}
    write_json(ROOT / "benchmarks" / "results" / "report_screenshots.json", result)
    print(f"test accuracy {metrics['accuracy']:.3f}, AUC {metrics.get('auc') or float('nan'):.3f}; warnings: "
          f"{', '.join(result['warnings']) or 'none'}")
    print(f"superpixels: at most {max(pieces)} piece(s) per superpixel over {len(pieces)} real X-ray segmentations")
    print(f"screenshots and explanations in {dest}")
    return 0 if max(pieces) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
