"""Which layers should the out-of-distribution guard read? (Lee et al. 2018, feature ensemble.)

For each run (default: the brain_tumor_mri and alzheimer_mri default-recipe runs the OOD benchmark
copied to /tmp/ood-runs; read only), embeds a subsample of images into the global-average-pooled
activations of every stage the model lists in timm's `feature_info` (plus the stem) and the
penultimate features, fits class-conditional Mahalanobis (shared Ledoit-Wolf covariance) per layer on
training images, thresholds at --quantile of the validation images and reports, per layer and for
combinations (each layer's score standardised by its validation scores, then the max or the sum):
AUROC and share flagged of the other MRI set's test images and of chest_xray test images (own test
split as the in-distribution side), and the share of the own test split flagged. Each layer is also
scored by the cosine distance to its nearest training image (the guard's kNN, k = 1), at the
validation quantile and above every validation image.

    OMP_NUM_THREADS=1 python benchmarks/ood_layers.py
    OMP_NUM_THREADS=1 python benchmarks/ood_layers.py --reuse        # score the saved activations again

Activations are saved under --work (one .npz per run) so --reuse only recomputes the figures.
Writes benchmarks/results/ood_layers.json."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RUNS = [Path("/tmp/ood-runs") / f"{d}-fixed-recipe-s0" for d in ("brain_tumor_mri", "alzheimer_mri")]
DATASETS = ("chest_xray", "brain_tumor_mri", "alzheimer_mri")


def subsample(records, cap: int | None, seed: int = 0):
    if cap and len(records) > cap:
        return [records[i] for i in np.sort(np.random.default_rng(seed).choice(len(records), cap, replace=False))]
    return records


def layer_modules(model) -> list[str]:
    info = getattr(model, "feature_info", None)
    names = [i["module"] for i in info] if isinstance(info, list) else []
    return (["bn1"] if hasattr(model, "bn1") else []) + names


def activations(run, model, records, reporter, batch: int = 64) -> tuple[dict[str, np.ndarray], list]:
    """{layer: (N, C) pooled mean, layer + ':std': (N, C) pooled spatial std, 'penultimate': (N, D)}."""
    import torch

    from medclassify.data.prepare import load_cache

    cache = load_cache(records, run.preprocessing, reporter)
    readable = [r for r in records if r.path in cache.row_of and r.path not in cache.errors]
    rows = cache.rows([r.path for r in readable])
    names = layer_modules(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in names]
    out: dict[str, list] = {}
    try:
        with torch.inference_mode():
            for s in range(0, len(rows), batch):
                x = run.preprocessing(np.ascontiguousarray(cache.images[rows[s : s + batch]]))
                f = model.forward_head(model.forward_features(x), pre_logits=True)
                for n in names:
                    a = seen[n].float()
                    out.setdefault(n, []).append(a.mean((2, 3)).numpy())
                    out.setdefault(n + ":std", []).append(a.std((2, 3)).numpy())
                out.setdefault("penultimate", []).append(f.float().numpy())
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in out.items()}, readable


def auroc(own: np.ndarray, foreign: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(own)), np.ones(len(foreign))], np.r_[own, foreign]))


def embed_run(run_path: Path, args, reporter) -> dict[str, dict[str, np.ndarray]]:
    import torch

    from medclassify.data.sources import scan_folder
    from medclassify.run import load_run

    saved = Path(args.work) / f"{run_path.name}-layers.npz"
    if args.reuse and saved.is_file():
        z = np.load(saved)
        out: dict[str, dict[str, np.ndarray]] = {}
        for k in z.files:
            split, _, layer = k.partition("|")
            out.setdefault(split, {})[layer] = z[k]
        return out
    run = load_run(run_path)
    model = run.build_model().float().eval()
    dataset = Path(run.info["data"]["root"]).name
    train = subsample(run.records("train"), args.max_train)
    sets = {"train": train, "val": run.records("val"), "test": subsample(run.records("test"), args.max_test)}
    for other in DATASETS:
        if other != dataset and (SHARED / other).is_dir():
            sets[f"{other} test"] = subsample([r for r in scan_folder(SHARED / other).records if r.split == "test"], args.max_test)
    out = {}
    for name, recs in sets.items():
        t = time.perf_counter()
        out[name], ok = activations(run, model, recs, reporter)
        if name == "train":
            out[name]["labels"] = np.array([run.classes.index(r.label) for r in ok])
        print(f"  embedded {name}: {len(next(iter(out[name].values())))} images in {time.perf_counter() - t:.0f} s", flush=True)
    saved.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(saved, **{f"{s}|{k}": v for s, d in out.items() for k, v in d.items()})
    torch.set_num_threads(args.threads)
    return out


def evaluate(feats: dict[str, dict[str, np.ndarray]], quantile: float) -> dict:
    from medclassify.ood.detector import fit_mahalanobis

    labels = feats["train"]["labels"]
    layers = [k for k in feats["train"] if k != "labels"]
    foreign = [s for s in feats if s not in ("train", "val", "test")]
    z: dict[str, dict[str, np.ndarray]] = {}  # layer -> split -> standardised score
    for layer in layers:
        det = fit_mahalanobis(feats["train"][layer], labels)
        val = det.score(feats["val"][layer])
        mu, sd = float(val.mean()), float(val.std()) or 1.0
        z[layer] = {s: (det.score(feats[s][layer]) - mu) / sd for s in ["val", "test", *foreign]}

    def figures(scores: dict[str, np.ndarray], threshold: float | None = None) -> dict:
        thr = float(np.quantile(scores["val"], quantile, method="higher")) if threshold is None else threshold
        r = {"own_test_flagged": round(float((scores["test"] > thr).mean()), 4)}
        for s in foreign:
            r[s] = {"auroc": round(auroc(scores["test"], scores[s]), 4), "flagged": round(float((scores[s] > thr).mean()), 4)}
        return r

    def shift(layer: str) -> dict:
        # How far the own test split sits from the validation images (drawn from the training pool), and
        # what a threshold far above every validation image (its maximum, 1.5 x its maximum) would flag.
        sc = z[layer]
        r = {"val_vs_own_test_auroc": round(auroc(sc["val"], sc["test"]), 4)}
        for k in (1.0, 1.5):
            thr = sc["val"].min() + k * (sc["val"].max() - sc["val"].min())
            r[f"flagged_above_{k}x_val_range"] = {s: round(float((sc[s] > thr).mean()), 4) for s in ["test", *foreign]}
        return r

    out = {"layers": {layer: {"dim": int(feats["train"][layer].shape[1]), **figures(z[layer]), **shift(layer)}
                      for layer in layers}, "combined": {}}
    means = [lay for lay in layers if not lay.endswith(":std") and lay != "penultimate"]
    combos = {f"{how} {'+'.join(c)}+penultimate": (how, [*c, "penultimate"])
              for how in ("max", "sum") for k in (1, 2, len(means)) for c in itertools.combinations(means, k)}
    combos |= {f"{how} all means+stds+penultimate": (how, layers) for how in ("max", "sum")}
    combos |= {f"{how} {m}+{m}:std+penultimate": (how, [m, m + ":std", "penultimate"]) for how in ("max", "sum") for m in means}
    # "union": the penultimate detector at its own validation quantile, and each earlier layer's score
    # over the largest score of any validation image (so the earlier layers flag no validation image
    # and the validation flag rate stays 1 - quantile); the combined score is the largest ratio of a
    # layer's score to its threshold, flagged above 1.
    t_pen = float(np.quantile(z["penultimate"]["val"], quantile, method="higher"))
    for k in (1, 2):
        for c in itertools.combinations(layers[:-1] if layers[-1] == "penultimate" else layers, k):
            out["combined"][f"union {'+'.join(c)}@valmax+penultimate@q"] = figures(
                {s: np.max(np.stack([(z["penultimate"][s] - z["penultimate"]["val"].min()) / (t_pen - z["penultimate"]["val"].min())]
                                    + [(z[lay][s] - z[lay]["val"].min()) / (z[lay]["val"].max() - z[lay]["val"].min()) for lay in c]), 0)
                 for s in z["penultimate"]}, threshold=1.0)
    for name, (how, use) in combos.items():
        agg = np.max if how == "max" else np.sum
        out["combined"][name] = figures({s: agg(np.stack([z[lay][s] for lay in use]), 0) for s in z[use[0]]})
    out["nearest"] = nearest_neighbour(feats, layers, foreign, figures)
    return out


def nearest_neighbour(feats, layers, foreign, figures) -> dict:
    """Each layer scored by the cosine distance to its nearest training image (the guard's kNN, k = 1),
    thresholded at the validation quantile and by the guard's rule for an earlier layer (above every
    validation image, at least their mean + 4 SD)."""
    from medclassify.ood.detector import EARLY_SPREAD, fit_knn

    out = {}
    for layer in layers:
        det = fit_knn(feats["train"][layer], k=1)
        scores = {s: det.score(feats[s][layer]) for s in ["val", "test", *foreign]}
        val = scores["val"]
        out[layer] = {"at validation quantile": figures(scores),
                      "above every validation image": figures(scores, max(float(val.max()), float(val.mean() + EARLY_SPREAD * val.std())))}
    return out


def show(name: str, r: dict) -> None:
    print(f"\n== {name}")
    def line(label, f):
        cells = "  ".join(f"{s[:10]:>10s} {v['auroc']:.3f}/{v['flagged']:5.1%}" for s, v in f.items() if isinstance(v, dict) and "auroc" in v)
        print(f"  {label:46s} own {f['own_test_flagged']:5.1%}  {cells}")
    for layer, f in r["layers"].items():
        line(f"{layer} ({f['dim']})", f)
    print("  own test vs validation AUROC (the own test split's shift), and flagged above the validation range:")
    for layer, f in r["layers"].items():
        print(f"  {layer:20s} val-vs-test AUROC {f['val_vs_own_test_auroc']:.3f}  " + "  ".join(
            f"{k.removeprefix('flagged_above_').removesuffix('_val_range')}: " + " ".join(f"{s[:10]} {v:5.1%}" for s, v in d.items())
            for k, d in f.items() if k.startswith("flagged_above")))
    for combo, f in r["combined"].items():
        line(combo, f)
    print("  nearest training image (k = 1, cosine):")
    for layer, by in r.get("nearest", {}).items():
        for rule, f in by.items():
            line(f"{layer} {rule}", f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, default=RUNS)
    ap.add_argument("--work", default="/tmp/ood-layers", help="where the activations are saved")
    ap.add_argument("--max-train", type=int, default=1500)
    ap.add_argument("--max-test", type=int, default=300, help="images of each test split (own and foreign)")
    ap.add_argument("--quantile", type=float, default=0.95)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ood_layers.json")
    args = ap.parse_args(argv)
    import torch

    from medclassify.reporting import Reporter

    torch.set_num_threads(args.threads)
    if not SHARED.is_dir():
        print(f"skip: the shared datasets ({SHARED}) are absent")
        return 0
    results = {}
    for run_path in args.runs:
        if not (run_path / "run.json").is_file():
            print(f"skip {run_path}: absent")
            continue
        print(f"embedding {run_path}", flush=True)
        feats = embed_run(run_path, args, Reporter(quiet=True))
        results[run_path.name] = evaluate(feats, args.quantile)
        show(run_path.name, results[run_path.name])
    if results:
        args.out.write_text(json.dumps({"command": "python benchmarks/ood_layers.py " + " ".join(sys.argv[1:]),
                                        "max_train": args.max_train, "max_test": args.max_test, "quantile": args.quantile,
                                        "runs": results}, indent=2) + "\n")
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
