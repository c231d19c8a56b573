"""Adapting a trained run to a new site's unlabelled images: the BatchNorm statistics re-estimated on
them (AdaBN, Li et al. 2016), everything else of the model left as trained.

Plain AdaBN takes the new images' feature statistics as they come, so the new site's class mix
leaks into the normalisation: when 80% of its images are one class, the statistics move towards
that class and the model drifts away from it. The guard (`reweight`) makes the images count so that
the mix of classes the source model predicts for them matches the training split's class shares
before the statistics are pooled; `alpha` interpolates the source and target statistics (1 = the
target's alone). Labels are never read: the folder is listed as plain image files.

Adapting to images that come from the training distribution only swaps good statistics for noisier
ones (measured: -1.2 points on a validation half of alzheimer_mri), so by default (`when="shift"`)
the statistics change only when the shift check (ood/twosample.py: MMD against the guard's held-out
reference, p < 0.01) finds the new images differ, and are kept only when the adapted model's
estimated accuracy on those images (ood/estimate.py, from its confidence, no labels) is higher than
the source model's: on chest_xray's official test split, which differs from training, every
variant of AdaBN lowered accuracy. Otherwise the new run keeps the source weights and records why.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch.nn as nn

from ..data.cache import build_cache, files_key
from ..data.listing import list_image_files
from ..data.preprocessing import Preprocessing
from ..engine import forward_images
from ..errors import DataError, RunError
from ..engine import predict_rows
from ..data.prepare import load_cache
from ..ood import fit_guard, load_guard
from ..ood.estimate import confidence_threshold, estimated_accuracy
from ..ood.twosample import shift_from_features
from ..io import OutputError, atomic_dir, check_replaceable_dir, file_sha256, resolved, write_bytes, write_csv
from ..reporting import Reporter
from ..run import Run, load_run, save_weights
from .batchnorm import apply_statistics, batchnorm_layers, target_statistics

Guard = Literal["reweight", "none"]
GUARDS: tuple[str, ...] = Guard.__args__
When = Literal["shift", "always"]
WHENS: tuple[str, ...] = When.__args__
MIN_IMAGES = 16  # fewer images give BatchNorm statistics too noisy to trust
MIN_VALIDATION = 20  # validation images needed to set the accuracy estimate's confidence threshold
MAX_WEIGHT = 10.0  # no image counts more than this many times its fair share
# The run's files that stay valid when only the BatchNorm statistics change; anything else (metrics,
# report, exported ONNX models, export.json) describes the old weights and is left behind.
CARRIED = ("config.yaml", "split.csv", "skipped.csv", "history.csv")


def class_weights(probs: np.ndarray, train_shares: np.ndarray) -> np.ndarray:
    """Per-image weights (mean 1) that give the predicted classes of the images the training shares:
    an image predicted as class k counts train_share[k] / predicted_share[k]. Classes the model never
    predicts here cannot be restored; the others keep their relative training shares."""
    pred = probs.argmax(1)
    k = probs.shape[1]
    predicted = np.bincount(pred, minlength=k) / len(pred)
    present = predicted > 0
    target = np.where(present, train_shares, 0.0)
    target = target / target.sum()
    w = np.where(present[pred], target[pred] / np.maximum(predicted[pred], 1e-12), 0.0)
    w = np.minimum(w, MAX_WEIGHT)
    return w * len(w) / w.sum()


def resample(weights: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of a weighted draw of len(weights) images (systematic resampling: each image appears
    floor or ceil of its weight times, in a shuffled order). Equal weights give every image once."""
    rng = np.random.default_rng(seed)
    n = len(weights)
    cum = np.cumsum(weights / weights.sum()) * n
    picks = np.searchsorted(cum, rng.uniform() + np.arange(n), side="right")
    return rng.permutation(np.minimum(picks, n - 1))


def adapt_batchnorm(model: nn.Module, images: np.ndarray, prep: Preprocessing, train_shares: np.ndarray | None,
                    guard: Guard = "reweight", alpha: float = 1.0, batch_size: int = 32, seed: int = 0,
                    probs: np.ndarray | None = None) -> dict:
    """Re-estimate the BatchNorm statistics of `model` (in place) on `images`, (N, H, W, C) uint8 at
    the run's size. `probs`: the unadapted model's probabilities of the images when already known
    (the guard computes them otherwise). Returns what was done, for the run record."""
    if guard not in GUARDS:
        raise ValueError(f"guard must be one of {GUARDS}, got {guard!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    n = len(images)
    info: dict = {"bn_layers": len(batchnorm_layers(model))}
    weights = np.ones(n)
    if guard == "reweight":
        if train_shares is None:
            raise ValueError("the reweight guard needs the training class shares")
        if probs is None:
            probs, _ = forward_images(model.eval(), images, prep, batch_size=batch_size)
        weights = class_weights(probs, np.asarray(train_shares, dtype=np.float64))
        k = probs.shape[1]
        info["predicted_shares"] = np.round(np.bincount(probs.argmax(1), minlength=k) / n, 4).tolist()
        info["weight_range"] = [round(float(weights.min()), 4), round(float(weights.max()), 4)]
    order = resample(weights, seed) if guard == "reweight" else np.random.default_rng(seed).permutation(n)
    apply_statistics(target_statistics(model, images, order, prep, batch_size), alpha)
    return info


def train_shares(run: Run) -> np.ndarray:
    """The class shares of the run's training split (from split.csv)."""
    counts = np.zeros(len(run.classes))
    index = {c: i for i, c in enumerate(run.classes)}
    for r in run.records("train"):
        if r.label in index:
            counts[index[r.label]] += 1
    if counts.sum() == 0:
        counts[:] = 1
    return counts / counts.sum()


@dataclass
class AdaptResult:
    run_dir: Path
    images: int
    unreadable: int
    record: dict


def _write_adapted(run: Run, out: Path, model: nn.Module, record: dict, readable: list[str], unreadable: dict[str, str],
                   reporter: Reporter, refit_ood: bool) -> None:
    """The new run, in one atomic step: the source's files that stay valid, the adapted (or, when no
    shift was found, the source's) weights, adaptation.csv and the record."""
    with atomic_dir(out, replace=out.exists()) as tmp:
        write_bytes(tmp / "run.json", (run.path / "run.json").read_bytes())
        for name in CARRIED:
            if (run.path / name).is_file():
                write_bytes(tmp / name, (run.path / name).read_bytes())
        if record["applied"]:
            save_weights(model, tmp / "model.safetensors")
        else:  # the same bytes, so the source's guard (tied to the weights' SHA-256) stays valid
            for name in ("model.safetensors", (run.info.get("ood") or {}).get("file", "ood.safetensors")):
                if (run.path / name).is_file():
                    write_bytes(tmp / name, (run.path / name).read_bytes())
        write_csv(tmp / "adaptation.csv", ["path", "used", "reason"],
                  [(p, "yes", "") for p in readable] + [(p, "no", r) for p, r in sorted(unreadable.items())])
        # The source's MLflow run and its export records describe the source weights, not these.
        adapted = load_run(tmp)
        calibration = adapted.info.get("calibration")
        if calibration:  # kept: there are no labels at the new site to fit another on (evaluate keeps it too)
            calibration = {**calibration, "fitted_on": "val, before adaptation"}
        if not record["applied"]:
            adapted.update(adaptation=record, tracking=None, exports=None)
        else:
            adapted.update(adaptation=record, tracking=None, exports=None, calibration=calibration,
                           ood={"status": "unavailable", "reason": "adapted weights; run `medclassify fit-guard` on this run"})
        if record["applied"] and refit_ood and (run.info.get("ood") or {}).get("status") == "fitted":
            fit_guard(adapted, reporter, quantile=run.info["ood"].get("quantile"), seed=record["seed"], model=model)


def _shift(run: Run, model: nn.Module, cache, rows: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
    """The shift check of the new images (source weights) against the run's guard reference, and the
    source model's probabilities of them."""
    probs, _, features = predict_rows(model, cache.images, rows, run.preprocessing, tta=run.tta,
                                      temperature=run.temperature, features=True)
    guard, reason = load_guard(run)
    if guard is None or guard.reference is None or len(guard.reference) < 2:
        return {"status": "unavailable", "reason": reason or "the guard stores no reference images"}, probs
    return shift_from_features(guard, features, "new site's", seed), probs


def _validation(run: Run, reporter: Reporter) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(images, rows, labels) of the run's readable validation images, or None with fewer than MIN_VALIDATION."""
    records = run.records("val")
    if len(records) < MIN_VALIDATION:
        return None
    cache = load_cache(records, run.preprocessing, reporter)
    ok = [r for r in records if r.path in cache.row_of and r.path not in cache.errors and r.label in run.classes]
    if len(ok) < MIN_VALIDATION:
        return None
    return cache.images, cache.rows([r.path for r in ok]), np.array([run.classes.index(r.label) for r in ok])


def _source_threshold(run: Run, source: nn.Module, reporter: Reporter, batch_size: int) -> dict:
    """The confidence threshold of the source model's validation images (ood/estimate.py), computed
    before the statistics change, or why there is none."""
    val = _validation(run, reporter)
    if val is None:
        return {"status": "unavailable", "reason": f"fewer than {MIN_VALIDATION} readable validation images"}
    images, rows, labels = val
    val_probs, _ = predict_rows(source, images, rows, run.preprocessing, batch_size=batch_size, tta=run.tta,
                                temperature=run.temperature)
    return {"status": "estimated", "method": "ATC (Garg et al. 2022): share of images at least as confident as the "
            "source model's validation accuracy implies", "threshold": confidence_threshold(val_probs, labels),
            "validation_images": int(len(labels))}


def _estimate(run: Run, threshold: dict, adapted: nn.Module, pixels: np.ndarray, source_probs: np.ndarray,
              batch_size: int) -> dict:
    """Estimated accuracy of the source and the adapted model on the new images, at `threshold`."""
    if threshold["status"] != "estimated":
        return threshold
    adapted_probs, _ = forward_images(adapted, pixels, run.preprocessing, tta=run.tta, temperature=run.temperature,
                                      batch_size=batch_size)
    t = threshold["threshold"]
    est = {"source": estimated_accuracy(source_probs, t), "adapted": estimated_accuracy(adapted_probs, t)}
    return {**threshold, "threshold": round(t, 6), **{k: round(v, 4) for k, v in est.items()},
            "gain": est["adapted"] > est["source"]}


def _target_images(folder: Path) -> tuple[list[str], dict[str, str]]:
    fix = "pass a folder of the new site's images (PNG, JPEG, DICOM, ...); class sub-folders are allowed, their names are not read."
    if not folder.exists():
        raise DataError(f"Image folder {folder} does not exist.", fix)
    if not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder of images.", fix)
    try:
        paths, skipped = list_image_files(folder)
    except OSError as e:
        raise DataError(f"Image folder {folder} cannot be listed ({e.strerror or e}).", fix) from None
    if not paths:
        raise DataError(f"Image folder {folder} holds no image files.", fix)
    return sorted(paths), skipped


def _check_out(run: Run, folder: Path, out: Path, overwrite: bool) -> None:
    r_out, r_run = resolved(out), resolved(run.path)
    if r_out == r_run or r_run in r_out.parents or r_out in r_run.parents:
        raise OutputError(f"--out {out} is, holds or lies inside the source run {run.path}.",
                          "choose a new folder for the adapted run.")
    check_replaceable_dir(out, overwrite, protected=[folder])


def adapt_run(run: Run | str | Path, images: str | Path, out: str | Path, guard: Guard = "reweight", alpha: float = 1.0,
              overwrite: bool = False, batch_size: int = 32, seed: int = 0, reporter: Reporter | None = None,
              refit_ood: bool = True, when: When = "shift") -> AdaptResult:
    """Write `out`: a complete run, `run` with its BatchNorm statistics re-estimated on the images
    below `images` (labels never read), recording what it was adapted on in run.json "adaptation".
    `when="shift"`: only if the shift check finds the images differ from the training distribution
    (a run without a guard cannot be checked: it is adapted, with a warning); else the new run holds
    the source weights and guard unchanged, `adaptation.applied` false with the check's figures.
    The source's out-of-distribution guard describes the source weights' features, so an adapted
    run's guard is fitted again on its own features (`refit_ood`; otherwise it is recorded as absent)."""
    if when not in WHENS:
        raise ValueError(f"when must be one of {WHENS}, got {when!r}")
    reporter = reporter or Reporter(quiet=True)
    run = run if isinstance(run, Run) else load_run(run)
    folder, out = Path(images), Path(out)
    _check_out(run, folder, out, overwrite)
    model = run.build_model()
    if not batchnorm_layers(model):
        raise RunError(f"The model of run {run.path} ({run.model_name}) has no BatchNorm layer, so there are no "
                       "normalisation statistics to adapt.", "adapt works on BatchNorm models (seed_cnn, efficientnet_lite0, "
                       "ResNets); use the run as it is.")
    paths, skipped = _target_images(folder)
    prep = run.preprocessing
    with reporter.task("Decoding the new site's images", len(paths)) as bar:
        cache = build_cache(paths, prep.image_size, prep.resize, prep.channels, progress=lambda d, t: bar.update(d))
    readable = [p for p in paths if p not in cache.errors]
    unreadable = {**skipped, **{p: cache.errors[p] for p in paths if p in cache.errors}}
    if len(readable) < MIN_IMAGES:
        first = f" ({len(unreadable)} unreadable, first: {next(iter(unreadable))})" if unreadable else ""
        raise DataError(f"Image folder {folder} has {len(readable)} readable image(s){first}; adaptation needs at least "
                        f"{MIN_IMAGES}.", f"pass at least {MIN_IMAGES} images of the new site.")
    if unreadable:
        reporter.warn(f"{len(unreadable)} unreadable image(s) left out of the adaptation (first: "
                      f"{next(iter(unreadable))}: {next(iter(unreadable.values()))}); listed in {out / 'adaptation.csv'}.")
    rows = cache.rows(readable)
    # every file readable: the memory-mapped cache itself, read batch by batch, never all in memory
    pixels = cache.images if np.array_equal(rows, np.arange(len(cache.images))) else cache.images[rows]
    check, source_probs = _shift(run, model, cache, rows, seed)
    applied = when == "always" or check.get("shift") is not False
    if when == "shift" and check.get("status") != "checked":
        reporter.warn(f"No shift check before adapting ({check['reason']}): adapting anyway.")
    estimate: dict = {}
    if applied:
        threshold = _source_threshold(run, model, reporter, batch_size) if when == "shift" else None
        info = adapt_batchnorm(model, pixels, prep, train_shares(run), guard=guard, alpha=alpha, batch_size=batch_size,
                               seed=seed, probs=source_probs)
        if threshold is not None:
            estimate = _estimate(run, threshold, model, pixels, source_probs, batch_size)
            if estimate["status"] != "estimated":
                reporter.warn(f"No accuracy estimate after adapting ({estimate['reason']}): the adaptation is kept.")
            elif not estimate["gain"]:
                applied, info = False, {"bn_layers": 0}
                differ = (f"The new site's images differ from the training distribution (p = {check['p_value']:.3g}), but"
                          if check.get("status") == "checked" else "Without a shift check,")
                reporter.warn(f"{differ} the adapted model's estimated accuracy on them is not higher "
                              f"({100 * estimate['source']:.1f}% -> {100 * estimate['adapted']:.1f}%, from the models' "
                              f"confidence): the BatchNorm statistics are kept; {out} holds the source weights. Use "
                              "--when always to adapt anyway.")
    else:
        info = {"bn_layers": 0}
        reporter.warn(f"{check['message']} The BatchNorm statistics are kept (adapting to images of the training "
                      f"distribution only adds noise); {out} holds the source weights. Use --when always to adapt anyway.")
    record = {"method": "adabn" if applied else "none", "applied": applied, "when": when,
              "shift": {k: check[k] for k in ("status", "p_value", "flagged", "shift", "reason") if k in check},
              **({"estimate": estimate} if estimate else {}),
              "guard": guard, "alpha": alpha, "batch_size": batch_size, "seed": seed,
              "source_run": str(resolved(run.path)), "source_weights": file_sha256(run.path / "model.safetensors")[:12],
              "images_folder": str(resolved(folder)), "images": len(readable), "unreadable": len(unreadable),
              "fingerprint": files_key(readable, "adapt"), "train_shares": np.round(train_shares(run), 4).tolist(),
              **info, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    _write_adapted(run, out, model, record, readable, unreadable, reporter, refit_ood)
    return AdaptResult(out, len(readable), len(unreadable), record)

