"""The shift check: does an image set come from the run's training distribution?

It compares the penultimate features of the images with the held-out reference the guard stored
(validation images, drawn like the training images but unseen by the weights: training images
themselves would differ from any new image only because the model memorised them), with:
  - the out-of-distribution flag rate (the guard's threshold passes `quantile` of validation images,
    so about 1 - quantile are flagged when nothing has shifted);
  - a two-sample test (MMD, permutation p-value with a fixed seed: ood/twosample.py).
`medclassify shift RUN DATA`, evaluate (metrics["shift"]) and report use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.listing import list_image_files
from ..data.prepare import load_cache
from ..data.sources import Record, scan_folder
from ..errors import DataError, MedClassifyError, RunError
from ..ood import Guard, embed, load_guard
from ..ood.twosample import mmd_test
from ..reporting import Reporter
from ..run import Run, load_run

ALPHA = 0.01  # p-value under which the image set is said to differ from the training distribution


def shift_from_features(guard: Guard, features: np.ndarray, name: str, seed: int = 0) -> dict:
    """The shift check of an image set's features against the guard's reference."""
    scores, inside = guard.flags(features)
    expected = 1 - float(guard.info.get("quantile", 0.95))
    out = {"status": "checked", "name": name, "images": int(len(features)), "flagged": float((~inside).mean()),
           "expected_flagged": round(expected, 6), "reference": guard.info.get("threshold_on", "val"),
           "reference_images": int(len(guard.reference))}
    test = mmd_test(guard.reference, guard.penultimate(features), seed=seed)
    out.update(test=test, p_value=test["p_value"], shift=bool(test["p_value"] < ALPHA), alpha=ALPHA)
    out["message"] = shift_sentence(out)
    return out


def shift_sentence(check: dict) -> str:
    if check.get("status") != "checked":
        return f"No shift check: {check.get('reason', 'the run has no out-of-distribution guard')}."
    rate = f"{check['flagged']:.0%} of its images are flagged as out-of-distribution ({check['expected_flagged']:.0%} expected)"
    p = f"MMD two-sample test p = {check['p_value']:.3g}"
    if check["shift"]:
        return (f"The {check['name']} images differ from the training distribution ({p}; {rate}): "
                f"validation figures will overstate {check['name']} figures.")
    return f"No shift detected between the {check['name']} images and the training distribution ({p}; {rate})."


def shift_check(run: Run, records: list[Record], name: str, reporter: Reporter | None = None, seed: int = 0,
                features: np.ndarray | None = None) -> dict:
    """The shift check of `records` (or of their already computed `features`) against the run."""
    guard, reason = load_guard(run)
    if guard is None or guard.reference is None or len(guard.reference) < 2:
        return {"status": "unavailable", "name": name, "reason": reason or "the guard stores no reference images",
                "message": shift_sentence({"reason": reason})}
    unreadable = 0
    if features is None:
        cache = load_cache(records, run.preprocessing, reporter or Reporter(quiet=True))
        _, features, ok = embed(run, records, cache)
        unreadable = len(records) - len(ok)
    if len(features) < 2:
        raise DataError(f"The {name} images hold {len(features)} readable image(s); the shift check needs at least 2.",
                        "pass a folder with more images.")
    out = shift_from_features(guard, features, name, seed)
    out["unreadable"] = unreadable
    return out


def image_set(data: str | Path, split: str | None = None) -> list[Record]:
    """The images of a dataset (class folders, split folders, a labels CSV) or of any folder of
    images; `split` keeps one split of a dataset."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data} does not exist.", "pass a folder of images or a dataset.")
    try:
        records = scan_folder(data).records
    except MedClassifyError:
        if not data.is_dir() or split:
            raise
        files, _ = list_image_files(data)
        records = [Record(p, "", None, None) for p in files]
    if split:
        have = sorted({r.split for r in records if r.split})
        records = [r for r in records if r.split == split]
        if not records:
            raise DataError(f"{data} has no {split!r} split (it has: {', '.join(have) or 'no split folders'}).",
                            "pass --split with one of those, or drop --split to use every image.")
    if not records:
        raise DataError(f"No images found in {data}.", "pass a folder that contains images.")
    return records


def check_data(run: str | Path | Run, data: str | Path, split: str | None = None, reporter: Reporter | None = None,
               seed: int = 0) -> dict:
    """`medclassify shift RUN DATA`: the shift check of DATA (or its `split`) against the run."""
    run = run if isinstance(run, Run) else load_run(run)
    records = image_set(data, split)
    check = shift_check(run, records, f"{Path(data).name}{'/' + split if split else ''}", reporter, seed)
    if check["status"] != "checked":
        raise RunError(f"Run {run.path} cannot run the shift check: {check['reason']}.",
                       f"fit its guard first: medclassify fit-guard {run.path}.")
    return check
