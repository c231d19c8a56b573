"""Out-of-distribution guard and shift check on real data (issue 16).

For the default-recipe run of each shared dataset (copied to --work before anything is fitted into
it; the originals are never modified):
  - both detectors (kNN cosine distance and class-conditional Mahalanobis with a shared covariance),
    fitted on the training images' penultimate features and thresholded at --quantile of the
    validation images, and the guard's own detector, "mahalanobis+layers": Mahalanobis on the
    penultimate features and each engine.guard_layers layer's pooled averages, the nearest training
    image's distance on the pooled spatial spread (ood/detector.py, Layered; benchmarks/ood_layers.py
    chose the layers), and "mahalanobis+last stage", the guard without its newest layer (the spread);
  - OOD AUROC (own test split vs each foreign set) and the share flagged of: the other shared
    datasets' test images, generated non-medical images (noise, Pillow text renderings, natural
    images from skimage.data with random crops), and the model's own test split;
  - the cost: fitting (embedding the training and validation images + the detector) against the
    run's recorded training time, and scoring per image;
  - the shift check (MMD, permutation p-value, seed 0): the official test split against the
    validation reference; a random re-split of the held-out validation images (no shift expected);
    and, for contrast, training images the weights have seen against the validation images.

    python benchmarks/ood.py                                          # the three default runs
    python benchmarks/ood.py /tmp/medclassify-bench-runs/brain_tumor_mri-fixed-recipe-s0 --max-foreign 200

Prints the figures and writes benchmarks/results/ood.json. A run that is absent (or still training:
no run.json) is skipped with a message."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
BENCH = Path("/tmp/medclassify-bench-runs")
DEFAULT_RUNS = [BENCH / f"{d}-fixed-recipe-s0" for d in ("chest_xray", "brain_tumor_mri", "alzheimer_mri")]
DATASETS = ("chest_xray", "brain_tumor_mri", "alzheimer_mri")
NATURAL = ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "horse", "rocket", "clock", "hubble_deep_field",
           "grass", "gravel", "brick", "cat", "colorwheel", "logo", "checkerboard")  # no medical images (retina, cells)
WORDS = ("invoice total patient name date signature form page report summary lorem ipsum dolor sit amet "
         "consent address phone insurance number reference").split()


def generated_images(folder: Path, n: int = 100, seed: int = 0) -> dict[str, list[str]]:
    """PNG files of non-medical images: noise, text renderings, natural photographs (with crops)."""
    from PIL import Image, ImageDraw, ImageFont
    import skimage.data

    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"noise": [], "text": [], "natural": []}
    for kind in out:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = int(rng.integers(96, 320))
        if i % 3 == 0:
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        elif i % 3 == 1:
            arr = np.clip(rng.normal(128, 50, (size, size)), 0, 255).astype(np.uint8)
        else:  # smooth noise: blurred blobs
            small = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            arr = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))
        p = folder / "noise" / f"noise{i}.png"
        Image.fromarray(arr).save(p)
        out["noise"].append(str(p))
    for i in range(n):
        w, h = int(rng.integers(200, 600)), int(rng.integers(150, 500))
        img = Image.new("L", (w, h), int(rng.integers(200, 256)))
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=int(rng.integers(10, 36)))
        y = 5
        while y < h - 10:
            draw.text((5, y), " ".join(rng.choice(WORDS, 8)), fill=int(rng.integers(0, 80)), font=font)
            y += int(font.size * 1.4)
        p = folder / "text" / f"text{i}.png"
        img.save(p)
        out["text"].append(str(p))
    natural = []
    for name in NATURAL:
        try:
            natural.append((name, np.asarray(getattr(skimage.data, name)())))
        except Exception:  # an image skimage would have to download
            continue
    for i in range(n):
        name, arr = natural[i % len(natural)]
        arr = arr[..., :3] if arr.ndim == 3 else arr
        if i >= len(natural):  # random crops beyond the first copy of each image
            h, w = arr.shape[:2]
            ch, cw = int(h * rng.uniform(0.4, 0.9)), int(w * rng.uniform(0.4, 0.9))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            arr = arr[y : y + ch, x : x + cw]
        p = folder / "natural" / f"{name}{i}.png"
        Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8)).save(p)
        out["natural"].append(str(p))
    return out


def test_records(dataset: str, cap: int | None, seed: int = 0):
    from medclassify.data.sources import scan_folder

    records = [r for r in scan_folder(SHARED / dataset).records if r.split == "test"]
    if cap and len(records) > cap:
        records = [records[i] for i in np.sort(np.random.default_rng(seed).choice(len(records), cap, replace=False))]
    return records


def auroc(own: np.ndarray, foreign: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(own)), np.ones(len(foreign))], np.r_[own, foreign]))


def features_of(run, records, model, reporter):
    from medclassify.data.prepare import load_cache
    from medclassify.ood import embed

    cache = load_cache(records, run.preprocessing, reporter)
    _, f, readable = embed(run, records, cache, model)
    return f, readable


def score_latency_ms(detector, feature: np.ndarray, repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        detector.score(feature[None])
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def predictor_latency_ms(run_path: Path, image: np.ndarray, repeats: int = 40) -> dict:
    """Single-image predict_array on PyTorch, with and without the guard (the same forward pass),
    interleaved call by call so a busy machine slows both alike. "added" is the difference of the
    medians; "added_paired" the median of the call-by-call differences, with its interquartile range
    (a few milliseconds of noise per call hide a sub-millisecond cost from 40 calls)."""
    from medclassify.inference.predictor import Predictor

    with_guard, without = Predictor(run_path, backend="torch", threads=1), Predictor(run_path, backend="torch", threads=1)
    without.guard = None
    times: dict[str, list[float]] = {"without_guard": [], "with_guard": []}
    pair = [("without_guard", without), ("with_guard", with_guard)]
    for i in range(repeats + 2):
        for name, p in pair if i % 2 else pair[::-1]:  # alternate which goes first
            t = time.perf_counter()
            p.predict_array(image)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    out = {k: round(float(np.median(v) * 1e3), 2) for k, v in times.items()}
    out["added"] = round(out["with_guard"] - out["without_guard"], 2)
    diff = (np.array(times["with_guard"]) - np.array(times["without_guard"])) * 1e3
    out["added_paired"] = round(float(np.median(diff)), 2)
    out["added_paired_iqr"] = [round(float(q), 2) for q in np.percentile(diff, [25, 75])]
    out["calls"] = repeats
    return out


def cost_ratio(run, model, records, batch: int = 32, rounds: int = 2) -> dict:
    """Seconds per image of the guard's embedding pass and of a training step (the run's frozen
    stages, AdamW, batch 32), timed alternately on the same images: their ratio does not depend on
    how busy the machine is, unlike a comparison with the training time run.json recorded."""
    import torch

    from medclassify.data.prepare import load_cache
    from medclassify.engine import predict_rows
    from medclassify.training.freeze import freeze_stages

    cache = load_cache(records, run.preprocessing, __import__("medclassify.reporting", fromlist=["Reporter"]).Reporter(quiet=True))
    rows = cache.rows([r.path for r in records])
    trainee = run.build_model()
    freeze_stages(trainee, int(run.info.get("frozen_stages") or 0), run.model_name)
    opt = torch.optim.AdamW([p for p in trainee.parameters() if p.requires_grad], lr=1e-4)
    y = torch.tensor([run.classes.index(r.label) for r in records])
    embed_t, train_t = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        predict_rows(model, cache.images, rows, run.preprocessing, batch_size=64, features=True)
        embed_t.append((time.perf_counter() - t) / len(rows))
        trainee.train()
        t = time.perf_counter()
        for s in range(0, len(rows), batch):
            x = run.preprocessing(np.ascontiguousarray(cache.images[rows[s : s + batch]]))
            loss = torch.nn.functional.cross_entropy(trainee(x), y[s : s + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_t.append((time.perf_counter() - t) / len(rows))
    return {"embed_s_per_image": min(embed_t), "train_step_s_per_image": min(train_t)}


def bench_run(src: Path, args, generated: dict[str, list[str]], reporter) -> dict | None:
    import torch

    from medclassify.data.sources import Record
    from medclassify.ood import DEFAULT_METHOD, load_guard
    from medclassify.engine import guard_layers
    from medclassify.ood.detector import METHODS, fit_detector, fit_layered, set_threshold
    from medclassify.ood.guard import layer_specs, store_guard
    from medclassify.ood.twosample import mmd_test
    from medclassify.evaluation.shift import shift_from_features
    from medclassify.run import load_run

    if not (src / "run.json").is_file():
        print(f"skip {src}: {'still training (no run.json yet)' if src.parent.joinpath('.' + src.name + '.partial').exists() else 'absent'}")
        return None
    dest = Path(args.work) / src.name
    saved = dest / "bench-features.npz"
    reuse = args.reuse and saved.is_file()
    if not reuse:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("model.onnx", "model.int8.onnx", "export.json", "ood.safetensors"))
    run = load_run(dest)
    if "ood" in run.info:
        run.update(ood=None)
    dataset = Path(run.info["data"]["root"]).name
    model = run.build_model()
    print(f"\n== {dataset}: {src}")
    t0 = time.perf_counter()
    train = run.records("train")
    layers = guard_layers(model)
    skip = sum(g.channels for g in layers)
    if reuse:  # the features a previous run of this script saved (--reuse): only the figures are recomputed
        z = np.load(saved)
        f_train, labels, f_val, f_test = z["train"], z["train_labels"], z["val"], z["test"]
        train_ok = train
        foreign = {k.replace("_test", " test").replace("generated_", "generated "): z[k] for k in z.files
                   if k not in ("train", "train_labels", "val", "test", "test_labels", "embed_s", "guard_layers_width")}
        embed_s = float(z["embed_s"]) if "embed_s" in z.files else float("nan")
        if (int(z["guard_layers_width"]) if "guard_layers_width" in z.files else 0) != skip:
            layers, skip = [], 0  # features saved before the guard read its layers: the penultimate ones alone
    else:
        f_train, train_ok = features_of(run, train, model, reporter)
        labels = np.array([run.classes.index(r.label) for r in train_ok])
        f_val = features_of(run, run.records("val"), model, reporter)[0]
        embed_s = time.perf_counter() - t0
        f_test, test_ok = features_of(run, run.records("test"), model, reporter)
        test_labels = np.array([run.classes.index(r.label) for r in test_ok])
        foreign = {}
        for other in DATASETS:
            if other != dataset and (SHARED / other).is_dir():
                foreign[f"{other} test"] = features_of(run, test_records(other, args.max_foreign), model, reporter)[0]
        for kind, paths in generated.items():
            foreign[f"generated {kind}"] = features_of(run, [Record(p, "", None, None) for p in paths], model, reporter)[0]
        np.savez_compressed(saved, train=f_train, train_labels=labels, val=f_val, test=f_test, test_labels=test_labels,
                            embed_s=embed_s, guard_layers_width=skip, **{k.replace(" ", "_"): v for k, v in foreign.items()})
    result = {"run": str(src), "dataset": dataset, "model": run.model_name, "features": int(f_train.shape[1]),
              "guard_layers": [[g.name, g.channels] for g in layers],
              "images": {"train": len(f_train), "val": len(f_val), "test": len(f_test),
                         **{k: len(v) for k, v in foreign.items()}},
              "train_s": run.info.get("timings", {}).get("train_s"), "embed_train_val_s": round(embed_s, 1), "methods": {}}
    def penultimate(f):
        return f[:, skip:]

    # the guard, and the guard without its first (newest) layer: the last stage and the penultimate features
    layered = {"mahalanobis+layers": layers, "mahalanobis+last stage": layers[1:]} if len(layers) > 1 else \
        {"mahalanobis+layers": layers} if layers else {}
    for method in [*METHODS, *layered]:
        t = time.perf_counter()
        if method in layered:
            cols = sum(g.channels for g in layered[method]) + f_train.shape[1] - skip
            det, val_scores = fit_layered(f_train[:, -cols:], labels, f_val[:, -cols:], args.quantile, layer_specs(layered[method]))
            view = lambda f, cols=cols: f[:, -cols:]  # noqa: E731
        else:
            det = fit_detector(method, penultimate(f_train), labels)
            val_scores = set_threshold(det, penultimate(f_val), args.quantile)
            view = penultimate
        fit_s = time.perf_counter() - t
        own = det.score(view(f_test))
        m = {"fit_detector_s": round(fit_s, 2), "val_flagged": round(float((val_scores > det.threshold).mean()), 4),
             "own_test_flagged": round(float((own > det.threshold).mean()), 4),
             "score_ms_per_image": round(score_latency_ms(det, view(f_test)[0]), 3), "sets": {}}
        for name, f in foreign.items():
            s = det.score(view(f))
            m["sets"][name] = {"auroc": round(auroc(own, s), 4), "flagged": round(float((s > det.threshold).mean()), 4)}
        result["methods"][method] = m
    t = time.perf_counter()
    rec = store_guard(run, f_train, labels, f_val, args.quantile, DEFAULT_METHOD, layers=layers)
    result["guard"] = {**{k: rec[k] for k in ("method", "threshold", "held_out_flagged")},
                       "fit_s": round(embed_s + time.perf_counter() - t, 1)}
    if result["train_s"]:
        result["guard"]["fit_share_of_training"] = round(result["guard"]["fit_s"] / result["train_s"], 4)
    guard, _ = load_guard(load_run(dest))
    rng = np.random.default_rng(0)
    half = rng.permutation(len(f_val))
    a, b = f_val[half[: len(half) // 2]], f_val[half[len(half) // 2 :]]
    seen = f_train[np.sort(rng.choice(len(f_train), min(len(f_train), 1000), replace=False))]
    flagged_b = round(float(np.mean(~guard.flags(b)[1])), 4)
    a, b, seen = penultimate(a), penultimate(b), penultimate(seen)  # the shift check reads the penultimate features
    test_check = shift_from_features(guard, f_test, "test")
    keys = ("p_value", "mmd2", "n_a", "n_b")
    resplit, seen_check = mmd_test(a, b), mmd_test(penultimate(f_val), seen)
    result["shift"] = {
        "official_test": {k: test_check[k] for k in ("p_value", "shift", "flagged", "images")} | {"mmd2": test_check["test"]["mmd2"]},
        "val_resplit": {**{k: resplit[k] for k in keys}, "flagged": flagged_b},
        "train_seen_vs_val": {k: seen_check[k] for k in keys},
    }
    ratio = cost_ratio(run, model, train_ok[:128])
    epochs = int(run.info.get("epochs_run") or run.info["config"].get("epochs") or 1)
    ratio["estimated_fit_share"] = round(ratio["embed_s_per_image"] * (len(f_train) + len(f_val))
                                         / (ratio["train_step_s_per_image"] * len(f_train) * epochs), 4)
    result["cost_same_machine"] = {k: round(v, 5) for k, v in ratio.items()} | {"epochs": epochs}
    img = np.asarray(np.random.default_rng(1).integers(0, 256, (run.preprocessing.image_size,) * 2), dtype=np.uint8)
    torch.set_num_threads(1)
    result["latency_ms"] = predictor_latency_ms(dest, img, args.latency_calls)
    torch.set_num_threads(args.threads)
    return result


def show(r: dict) -> None:
    print(f"{r['dataset']} ({r['model']}, {r['features']} features, guard layers {r.get('guard_layers')}): images {r['images']}")
    for method, m in r["methods"].items():
        print(f"  {method:12s} val flagged {m['val_flagged']:.1%}, own test flagged {m['own_test_flagged']:.1%}, "
              f"detector fit {m['fit_detector_s']} s, score {m['score_ms_per_image']} ms/image")
        for name, s in m["sets"].items():
            print(f"      {name:28s} AUROC {s['auroc']:.4f}  flagged {s['flagged']:.1%}")
    g = r["guard"]
    print(f"  guard ({g['method']}): fit {g['fit_s']} s (embedding train+val {r['embed_train_val_s']} s) vs training "
          f"{r['train_s']} s = {g.get('fit_share_of_training', float('nan')):.1%} (on a machine busier than during training)")
    c = r["cost_same_machine"]
    print(f"  same-machine cost: embedding {c['embed_s_per_image'] * 1e3:.1f} ms/image, training step "
          f"{c['train_step_s_per_image'] * 1e3:.1f} ms/image x {c['epochs']} epochs: fit = {c['estimated_fit_share']:.1%} of training")
    s = r["shift"]
    print(f"  shift: official test p = {s['official_test']['p_value']:.4f} (flagged {s['official_test']['flagged']:.1%}); "
          f"val re-split p = {s['val_resplit']['p_value']:.4f} (flagged {s['val_resplit']['flagged']:.1%}); "
          f"seen training images vs val p = {s['train_seen_vs_val']['p_value']:.4f}")
    print(f"  single-image predict (torch, 1 thread): {r['latency_ms']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, default=DEFAULT_RUNS)
    ap.add_argument("--work", default="/tmp/ood-runs", help="where the runs are copied before the guard is fitted")
    ap.add_argument("--max-foreign", type=int, default=300, help="images drawn from each other dataset's test split")
    ap.add_argument("--generated", type=int, default=100, help="generated images of each kind")
    ap.add_argument("--quantile", type=float, default=0.95)
    ap.add_argument("--reuse", action="store_true", help="reuse the features a previous run saved in --work")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-calls", type=int, default=40, help="single-image predictions timed with and without the guard")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ood.json")
    args = ap.parse_args(argv)
    import torch

    from medclassify.reporting import Reporter

    torch.set_num_threads(args.threads)
    if not SHARED.is_dir():
        print(f"skip: the shared datasets ({SHARED}) are absent")
        return 0
    gen = generated_images(Path(args.work) / "generated", args.generated)
    results = []
    for src in args.runs:
        r = bench_run(Path(src), args, gen, Reporter(quiet=True))
        if r:
            show(r)
            results.append(r)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
            kept = [p for p in previous.get("runs", []) if p.get("dataset") != r["dataset"]]
            args.out.write_text(json.dumps({"command": "python benchmarks/ood.py " + " ".join(sys.argv[1:]),
                                            "quantile": args.quantile, "runs": kept + [r]}, indent=2) + "\n")
    if results:
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
