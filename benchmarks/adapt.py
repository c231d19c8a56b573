"""Adaptation benchmark: does `medclassify adapt` (AdaBN on a new site's unlabelled images) help on
each shared dataset's official test split, which comes from other scanners than train?

Each run's official test split is cut in two halves by a fixed seed (stratified by label, so both
halves have the same class mix; the adaptation itself never reads a label). The run is adapted on
half A with the real verb (`adapt_run`, written under --runs-dir) and scored on half B, then the
other way round; the unadapted model is scored on the same halves.

`--compare` also measures, in memory, the choices behind the default: plain AdaBN, the class-share
re-weighting guard, and interpolated statistics (alpha 0.5), each on the natural halves and on a
skewed adaptation set (half A cut to one class in ~70%, scored on the balanced half B): the case
the guard exists for.

    python benchmarks/adapt.py /tmp/medclassify-bench-runs/brain_tumor_mri-fixed-recipe-s0 --compare
    python benchmarks/adapt.py RUN [RUN ...] --runs-dir /tmp/adapt-runs

Prints a table and writes benchmarks/results/adapt.json. `shift_detected` is the shift check's answer
for the scored half when the run has an out-of-distribution guard (`medclassify fit-guard RUN`, or the
copies benchmarks/ood.py makes under /tmp/ood-runs): a test half against the guard's held-out
validation reference (MMD, p < 0.01), a validation half against the other validation half (the
reference itself holds them). Without a guard it stays null."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
DATASETS = ["chest_xray", "alzheimer_mri", "brain_tumor_mri"]
VARIANTS = {"plain AdaBN": ("none", 1.0), "reweight": ("reweight", 1.0), "alpha 0.5": ("none", 0.5)}


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves with the same class mix (each class shuffled and cut in two)."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = (len(idx) + rng.integers(0, 2)) // 2
        a += idx[:cut].tolist()
        b += idx[cut:].tolist()
    return np.sort(a), np.sort(b)


def skewed(idx: np.ndarray, labels: np.ndarray, seed: int, keep_others: float = 0.2) -> np.ndarray:
    """`idx` with all of its most common class and `keep_others` of every other class."""
    rng = np.random.default_rng(seed + 1)
    major = np.bincount(labels[idx]).argmax()
    keep = [i for i in idx if labels[i] == major or rng.uniform() < keep_others]
    return np.asarray(sorted(keep))


def half_features(run, pixels: np.ndarray):
    """Penultimate features of already decoded images, or None when the run has no fitted guard."""
    from medclassify.engine import forward_images
    from medclassify.ood import load_guard

    guard, _ = load_guard(run)
    if guard is None:
        return None, None
    out = forward_images(run.build_model(), pixels, run.preprocessing, tta=run.tta, temperature=run.temperature, features=True)
    return guard, out[-1]


def shift_of(guard, features, against=None) -> tuple[bool | None, float | None]:
    """(shift detected, p-value) of a half: against the guard's reference, or against another sample."""
    from medclassify.ood.twosample import ALPHA, mmd_test, shift_from_features

    if guard is None:
        return None, None
    p = (mmd_test(guard.penultimate(against), guard.penultimate(features))["p_value"] if against is not None
         else shift_from_features(guard, features, "half")["p_value"])
    return bool(p < ALPHA), round(float(p), 4)


def scores(y: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    return {"accuracy": round(float((pred == y).mean()), 4), "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4)}


def probabilities(model, pixels: np.ndarray, prep, tta: bool) -> np.ndarray:
    from medclassify.engine import forward_images

    return forward_images(model, pixels, prep, tta=tta)[0]


def predictions(model, pixels: np.ndarray, prep, tta: bool) -> np.ndarray:
    return probabilities(model, pixels, prep, tta).argmax(1)


def link_folder(folder: Path, paths: list[str]) -> Path:
    """A folder of symbolic links to `paths`, flat and without class names: what a new site hands over."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, p in enumerate(paths):
        (folder / f"{i:05d}{Path(p).suffix}").symlink_to(p)
    return folder


def stats_by_name(model, pixels: np.ndarray, order: np.ndarray, prep) -> dict:
    from medclassify.training.adapt import target_statistics

    names = {m: n for n, m in model.named_modules()}
    return {names[m]: v for m, v in target_statistics(model, pixels, order, prep).items()}


def with_stats(model, stats: dict, alpha: float):
    from medclassify.training.adapt import apply_statistics

    m = copy.deepcopy(model)
    modules = dict(m.named_modules())
    apply_statistics({modules[k]: v for k, v in stats.items()}, alpha)
    return m


def adapted_run(run, paths: list[str], name: str, side: str, args) -> Path:
    """The real verb on the half's images; an earlier result with the same settings is reused (--reuse)."""
    from medclassify.training.adapt import adapt_run

    out = Path(args.runs_dir) / f"{name}-adapted-on-{side}"
    if args.reuse and (out / "run.json").is_file():
        a = json.loads((out / "run.json").read_text()).get("adaptation", {})
        if (a.get("guard"), a.get("alpha"), a.get("seed"), a.get("images"), a.get("source_run"), a.get("when")) == \
                (args.guard, args.alpha, args.seed, len(paths), str(Path(run.path).resolve()), args.when):
            return out
    folder = link_folder(Path(args.runs_dir) / "images" / f"{name}-half{side}", paths)
    return adapt_run(run, folder, out, guard=args.guard, alpha=args.alpha, overwrite=True, seed=args.seed,
                     refit_ood=False, when=args.when).run_dir


def adaptation_of(run_dir: Path) -> dict:
    """Whether the verb adapted (its shift check of the adaptation half, and its accuracy estimate of
    the source and the adapted model on that half), from the new run's record."""
    a = json.loads((run_dir / "run.json").read_text())["adaptation"]
    est = a.get("estimate") or {}
    return {"applied": a.get("applied", True), "adaptation_half_p_value": (a.get("shift") or {}).get("p_value"),
            **({"estimated_accuracy": {"source": est["source"], "adapted": est["adapted"]}} if est.get("status") == "estimated" else {})}


def same_site_rows(run, model, args) -> list[dict]:
    """The no-shift case: the run's own validation split (drawn from the training images) halved the
    same way, adapted on one half by the verb with the chosen settings and scored on the other. The
    guard's reference is the validation split itself, so the verb's own check finds no shift."""
    from medclassify.data.cache import build_cache
    from medclassify.run import load_run

    records = run.records("val")
    prep = run.preprocessing
    cache = build_cache(sorted(r.path for r in records), prep.image_size, prep.resize, prep.channels)
    records = [r for r in records if r.path not in cache.errors]
    index = {c: i for i, c in enumerate(run.classes)}
    y = np.array([index[r.label] for r in records])
    pixels = np.asarray(cache.images[cache.rows([r.path for r in records])])
    source_pred = predictions(model, pixels, prep, run.tta)
    a, b = halves(y, args.seed)
    guard, feats = half_features(run, pixels)
    rows = []
    for adapt_on, score_on, label in ((a, b, ("A", "B")), (b, a, ("B", "A"))):
        shift, p_value = shift_of(guard, feats[score_on] if guard else None, feats[adapt_on] if guard else None)
        run_dir = adapted_run(run, [records[i].path for i in adapt_on], f"{run.info['data']['root'].rstrip('/').split('/')[-1]}-val",
                              label[0], args)
        m = load_run(run_dir).build_model()
        after, before = scores(y[score_on], predictions(m, pixels[score_on], prep, run.tta)), scores(y[score_on], source_pred[score_on])
        rows.append({"split": "val", "adapted_on": label[0], "scored_on": label[1], "n": len(score_on),
                     "accuracy": {"source": before["accuracy"], "adapted": after["accuracy"]},
                     "balanced_accuracy": {"source": before["balanced_accuracy"], "adapted": after["balanced_accuracy"]},
                     "delta_accuracy_points": round(100 * (after["accuracy"] - before["accuracy"]), 2), "shift_detected": shift,
                     "shift_p_value": p_value, **adaptation_of(run_dir)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_run(run_path: Path, args) -> dict:
    from medclassify.data.cache import build_cache
    from medclassify.run import load_run
    from medclassify.training.adapt import class_weights, resample, train_shares

    run = load_run(run_path)
    name = Path(run.info["data"]["root"]).name
    records = run.records("test")
    index = {c: i for i, c in enumerate(run.classes)}
    prep = run.preprocessing
    cache = build_cache(sorted(r.path for r in records), prep.image_size, prep.resize, prep.channels)
    records = [r for r in records if r.path not in cache.errors]
    paths = [r.path for r in records]
    y = np.array([index[r.label] for r in records])
    pixels = np.asarray(cache.images[cache.rows(paths)])
    model = run.build_model()
    source_probs = probabilities(model, pixels, prep, run.tta)
    source_pred = source_probs.argmax(1)
    a, b = halves(y, args.seed)
    out = {"dataset": name, "run": str(run_path), "model": run.model_name, "test_images": len(y),
           "halves": {"A": len(a), "B": len(b)}, "tta": run.tta, "rows": []}
    headline = {}
    guard, feats = half_features(run, pixels)
    for adapt_on, score_on, label in ((a, b, ("A", "B")), (b, a, ("B", "A"))):
        t0 = time.perf_counter()
        shift, p_value = shift_of(guard, feats[score_on] if guard else None)
        run_dir = adapted_run(run, [paths[i] for i in adapt_on], name, label[0], args)
        after = scores(y[score_on], predictions(load_run(run_dir).build_model(), pixels[score_on], prep, run.tta))
        before = scores(y[score_on], source_pred[score_on])
        headline[label[0]] = after
        out["rows"].append({"adapted_on": label[0], "scored_on": label[1], "n": len(score_on),
                            "accuracy": {"source": before["accuracy"], "adapted": after["accuracy"]},
                            "balanced_accuracy": {"source": before["balanced_accuracy"], "adapted": after["balanced_accuracy"]},
                            "delta_accuracy_points": round(100 * (after["accuracy"] - before["accuracy"]), 2),
                            "shift_detected": shift, "shift_p_value": p_value, "adapted_run": str(run_dir), **adaptation_of(run_dir),
                            "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(out["rows"][-1]), flush=True)
    if args.val:
        out["val_rows"] = same_site_rows(run, model, args)
    if args.compare:
        shares = train_shares(run)
        compare = []
        rng = np.random.default_rng(args.seed)
        for setting, sets in (("natural halves", ((a, b, "A->B"), (b, a, "B->A"))),
                              ("skewed adaptation set", ((skewed(a, y, args.seed), b, "A'->B"), (skewed(b, y, args.seed), a, "B'->A")))):
            for adapt_on, score_on, direction in sets:
                mix = np.bincount(y[adapt_on], minlength=len(run.classes)) / len(adapt_on)
                row = {"setting": setting, "direction": direction, "adaptation_images": len(adapt_on),
                       "adaptation_class_mix": np.round(mix, 3).tolist(),
                       "source": scores(y[score_on], source_pred[score_on])}
                target = pixels[adapt_on]
                plain = stats_by_name(model, target, rng.permutation(len(adapt_on)), prep)
                row["plain AdaBN"] = scores(y[score_on], predictions(with_stats(model, plain, 1.0), pixels[score_on], prep, run.tta))
                row["alpha 0.5"] = scores(y[score_on], predictions(with_stats(model, plain, 0.5), pixels[score_on], prep, run.tta))
                if setting == "natural halves" and args.guard == "reweight" and args.alpha == 1.0:
                    row["reweight"] = headline[direction[0]]  # the adapted run above: the same computation
                else:
                    w = class_weights(source_probs[adapt_on], shares)
                    guarded = stats_by_name(model, target, resample(w, args.seed), prep)
                    row["reweight"] = scores(y[score_on], predictions(with_stats(model, guarded, 1.0), pixels[score_on], prep, run.tta))
                compare.append(row)
                print(json.dumps(row), flush=True)
        out["compare"] = compare
    return out


def decision(row: dict) -> str:
    """What the verb did with the half: adapted, or why not (no shift; no estimated gain)."""
    if row.get("applied", True):
        return "adapted"
    return "no est. gain" if "estimated_accuracy" in row else "no shift"


def table(results: list[dict]) -> str:
    lines = [f"{'dataset':16s} {'adapt->score':12s} {'n':>5s} {'acc src':>8s} {'acc adapt':>9s} {'bal src':>8s} {'bal adapt':>9s} {'decision':>12s}"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"{r['dataset']:16s} {row['adapted_on'] + '->' + row['scored_on']:12s} {row['n']:5d} "
                         f"{100 * row['accuracy']['source']:7.1f}% {100 * row['accuracy']['adapted']:8.1f}% "
                         f"{100 * row['balanced_accuracy']['source']:7.1f}% {100 * row['balanced_accuracy']['adapted']:8.1f}% "
                         f"{decision(row):>12s}")
        for row in r.get("val_rows", []):
            lines.append(f"{r['dataset']:16s} val {row['adapted_on'] + '->' + row['scored_on']:8s} {row['n']:5d} "
                         f"{100 * row['accuracy']['source']:7.1f}% {100 * row['accuracy']['adapted']:8.1f}% "
                         f"{100 * row['balanced_accuracy']['source']:7.1f}% {100 * row['balanced_accuracy']['adapted']:8.1f}% "
                         f"{decision(row):>12s}")
        for row in r.get("compare", []):
            cells = " ".join(f"{k} {100 * row[k]['accuracy']:.1f}/{100 * row[k]['balanced_accuracy']:.1f}"
                             for k in ["source", *VARIANTS])
            lines.append(f"  compare {row['setting']} {row['direction']}: {cells}  (acc/bal %)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="Default-recipe runs of the shared datasets.")
    p.add_argument("--runs-dir", default="/tmp/adapt-runs", help="Where the adapted runs and the halves' link folders go.")
    p.add_argument("--guard", default="reweight")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--when", default="shift", help="adapt's --when: shift (the default: only when the adaptation "
                                                    "half differs from training) or always")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="Also compare plain AdaBN, the guard and alpha (in memory).")
    p.add_argument("--reuse", action="store_true", help="Reuse adapted runs under --runs-dir made with the same settings.")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adapt.json")
    p.add_argument("--val", action="store_true", help="Also the no-shift case: the run's validation split halved, "
                                                        "adapted on one half and scored on the other.")
    p.add_argument("--merge", action="store_true", help="Keep the other datasets' entries already in --out.")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from medclassify.io import write_json

    results = []
    for run in args.runs:
        if not (run / "run.json").is_file():
            print(f"skipped {run}: no run.json (not trained yet?)")
            continue
        info = json.loads((run / "run.json").read_text())
        root = Path(info.get("data", {}).get("root", ""))
        if root.name not in DATASETS or not (SHARED / root.name).is_dir() or not root.is_dir():
            print(f"skipped {run}: its dataset {root} is not a shared dataset present here")
            continue
        results.append(bench_run(run, args))
    if not results:
        print("nothing measured (no run of a shared dataset present)")
        return 0
    commands = ["python benchmarks/adapt.py " + " ".join(sys.argv[1:] if argv is None else argv)]
    if args.merge and args.out.is_file():
        before = json.loads(args.out.read_text())
        measured = {r["dataset"] for r in results}
        results = [r for r in before.get("results", []) if r["dataset"] not in measured] + results
        commands = before.get("commands", []) + commands
    print(table(results))
    drops = [(r["dataset"], row.get("split", "test"), row["adapted_on"], row["delta_accuracy_points"]) for r in results
             for row in r["rows"] + r.get("val_rows", []) if row["delta_accuracy_points"] < -1]
    write_json(args.out, {"benchmark": "adapt", "commands": commands,
                          "method": {"guard": args.guard, "alpha": args.alpha, "seed": args.seed, "when": args.when},
                          "halves": "official test split, each class shuffled (seed) and cut in two; labels only make the "
                                    "halves alike and score them, adaptation never reads them",
                          "acceptance": "accuracy must not drop by more than 1 point on a half where shift_detected is false",
                          "drops_over_1_point": drops, "results": results})
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
