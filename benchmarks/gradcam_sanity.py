"""Grad-CAM sanity on generated data whose class signal is a bright blob at a random position.

    python benchmarks/gradcam_sanity.py [--size 128 --per-class 200 --epochs 8]

1. Localisation: train a small seed_cnn to tell 'lesion' (one blob) from 'normal' (none); on every
   held-out lesion image, the top-20% area of the Grad-CAM map for 'lesion' must contain the blob's
   centre. Target: >= 90% of test images.
2. Model randomisation (Adebayo et al. 2018): re-initialise every weight and recompute the maps; the
   Spearman rank correlation between trained and randomised maps must be <= 0.5 (mean over images).
3. Flat maps: the share of test images (lesion and normal) whose map for their predicted class is
   flat, which explain reports as "no localised evidence for CLASS in this image" (reported, no target).
Grad-CAM++ is measured the same way for information (the target is Grad-CAM's). Writes
benchmarks/results/gradcam_sanity.json (or --out)."""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_data(root: Path, per_class: int, size: int, seed: int) -> dict[str, tuple[float, float]]:
    """train/ and test/ folders of lesion/normal images; returns each test lesion image's blob centre."""
    from PIL import Image

    from medclassify.data.synthetic import synthetic_image

    rng = np.random.default_rng(seed)
    centres = {}
    for split, n in (("train", per_class), ("test", max(20, per_class // 4))):
        for cls, blobs in (("lesion", 1), ("normal", 0)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                where: list = []
                img = synthetic_image(rng, size, blobs, centres=where)
                path = folder / f"{cls}_{i}.png"
                Image.fromarray(img).save(path)
                if split == "test" and blobs:
                    centres[str(path)] = where[0]
    return centres


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a.ravel(), b.ravel()).statistic
    return float(np.nan_to_num(r))


def randomised(model):
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gradcam_sanity.json")
    args = ap.parse_args()

    import torch

    from medclassify.config import TrainConfig
    from medclassify.evaluation.evaluate import evaluate
    from medclassify.explain import GradCAM, GradCAMPlusPlus
    from medclassify.inference.predictor import Predictor
    from medclassify.io import write_json
    from medclassify.reporting import Reporter
    from medclassify.run import load_run
    from medclassify.training.fit import train

    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="gradcam-sanity-"))
    centres = make_data(work / "data", args.per_class, args.size, args.seed)
    t0 = time.perf_counter()
    config = TrainConfig(data=str(work / "data"), out=str(work / "run"), model="seed_cnn", image_size=args.size,
                         epochs=args.epochs, time_budget=None, batch_size=32, augment="light", early_stopping=0,
                         normalize="fixed", lr=2e-3, seed=args.seed)
    train(config, reporter=Reporter(quiet=True))
    train_s = time.perf_counter() - t0
    test = evaluate(work / "run", reporter=Reporter(quiet=True), save=False)
    predictor = Predictor(work / "run")
    lesion = predictor.classes.index("lesion")
    random_model = randomised(predictor.model)
    result = {"image_size": args.size, "train_images": 2 * args.per_class, "test_lesion_images": len(centres),
              "epochs": args.epochs, "train_s": round(train_s, 1), "test_accuracy": test["accuracy"], "methods": {}}
    passed = True
    for cls in (GradCAM, GradCAMPlusPlus):
        trained = cls(predictor.model, predictor.prep)
        rand = cls(random_model, predictor.prep)
        inside, corr = [], []
        for path, (cy, cx) in centres.items():
            image = predictor.load(path)
            heat = trained.explain(image, lesion).heatmap
            top = heat >= np.quantile(heat, 0.8)
            inside.append(bool(top[min(int(round(cy)), args.size - 1), min(int(round(cx)), args.size - 1)]))
            corr.append(spearman(heat, rand.explain(image, lesion).heatmap))
        flat = []
        for path in (r.path for r in load_run(work / "run").records("test")):
            flat.append(trained.explain(predictor.load(path)).flat)
        hit_rate = float(np.mean(inside))
        mean_corr = float(np.mean(corr))
        ok = hit_rate >= 0.9 and mean_corr <= 0.5
        if cls is GradCAM:  # the target; Grad-CAM++ is measured the same way for information
            passed &= ok
        result["methods"][cls.name] = {"blob_in_top20_rate": hit_rate, "spearman_trained_vs_random_mean": mean_corr,
                                       "spearman_median": float(np.median(corr)),
                                       "spearman_abs_mean": float(np.mean(np.abs(corr))),
                                       "share_of_images_at_most_0.5": float(np.mean(np.asarray(corr) <= 0.5)),
                                       "flat_map_share": float(np.mean(flat)), "test_images": len(flat), "passed": ok}
        print(f"{cls.name:10s} blob centre in top-20% area: {hit_rate:.1%} (target >= 90%); Spearman trained vs "
              f"randomised: mean {mean_corr:.3f}, median {np.median(corr):.3f}, mean |r| {np.mean(np.abs(corr)):.3f} "
              f"(target <= 0.5) -> {'PASS' if ok else 'FAIL'}; flat maps (predicted class): {np.mean(flat):.1%} "
              f"of {len(flat)} test images")
    print(f"seed_cnn at {args.size} px, test accuracy {test['accuracy']:.3f}, trained in {train_s:.0f} s")
    result["passed"] = passed
    write_json(args.out, result)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
