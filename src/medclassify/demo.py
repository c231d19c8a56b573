"""`medclassify demo`: the whole path on a generated dataset, small enough for a laptop minute."""

from __future__ import annotations

import shutil
from pathlib import Path

from .data.synthetic import generate_dataset
from .errors import RunError
from .io import OutputError, check_writable_folder, write_text
from .reporting import Reporter


def run_demo(out: str | Path, reporter: Reporter | None = None) -> str:
    from .config import TrainConfig
    from .evaluation.evaluate import evaluate
    from .inference.predictor import predict_files
    from .training.fit import train

    reporter = reporter or Reporter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder.", "pass another --out.")
    if out.is_dir() and any(out.iterdir()) and not (out / ".medclassify-demo").is_file():
        raise RunError(f"{out} exists and is not a medclassify demo folder.", "pass another --out.")
    check_writable_folder(out)
    shutil.rmtree(out, ignore_errors=True)  # an earlier demo's folder (its marker says so)
    write_text(out / ".medclassify-demo", "folder written by `medclassify demo`; safe to delete\n")
    data = generate_dataset(out / "data", classes=("normal", "one lesion", "two lesions"), per_class=80, size=64,
                            splits={"train": 0.75, "test": 0.25}, seed=0)
    reporter.info(f"Generated 240 grey 64 px images in 3 classes under {data}.")
    config = TrainConfig(data=str(data), out=str(out / "run"), model="seed_cnn", image_size=64, epochs=12, time_budget=None,
                         augment="light", normalize="fixed", lr=2e-3, early_stopping=0, batch_size=32, label_smoothing=0.0, drop_rate=0.1)
    result = train(config, reporter=reporter)
    test = evaluate(result.run_dir, split="test", reporter=reporter)
    preds = predict_files(result.run_dir, [data / "test"], out / "predictions.csv", reporter=reporter)
    return (f"Demo finished: test accuracy {test['accuracy']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}, "
            f"macro-F1 {test['macro_f1']:.3f}, AUC {test['auc']:.3f} on {test['n']} held-out images; "
            f"{len(preds)} predictions in {out / 'predictions.csv'}; run in {result.run_dir}.")
