"""The run the serving benchmarks measure: efficientnet_lite0 at 224 px, exported to ONNX.

`--run RUN` names one; otherwise the newest chest_xray run of benchmarks/accuracy.py under
/tmp/medclassify-bench-runs is used when it is an efficientnet_lite0 run; otherwise a stand-in is
trained for one epoch on 40 generated images (speed figures only: its weights mean nothing). The
run is copied to a scratch folder before export, so nobody else's run directory is written to."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
SCRATCH = Path("/tmp/medclassify-serve-bench")


def find_lead_run(model: str = "efficientnet_lite0") -> Path | None:
    import json

    runs = sorted(Path("/tmp/medclassify-bench-runs").glob("chest_xray-*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    for weights in reversed(runs):
        info = json.loads((weights.parent / "run.json").read_text())
        if info["config"]["model"] == model:
            return weights.parent
    return None


def stand_in_run(size: int = 224) -> Path:
    from medclassify.config import TrainConfig
    from medclassify.data.synthetic import generate_dataset
    from medclassify.reporting import Reporter
    from medclassify.training.fit import train

    out = SCRATCH / f"standin-{size}"
    if (out / "model.safetensors").is_file():
        return out
    data = generate_dataset(SCRATCH / "standin-data", per_class=20, size=size, splits={"train": 0.7, "test": 0.3})
    cfg = TrainConfig(data=str(data), out=str(out), model="efficientnet_lite0", image_size=size, epochs=1, time_budget=None,
                      batch_size=16, normalize="per-image")
    return train(cfg, reporter=Reporter(quiet=True), overwrite=True).run_dir


def exported_run(run: str | None) -> tuple[Path, str]:
    """(a scratch copy of the run with model.onnx, where it came from)."""
    from medclassify.inference.export import export_onnx

    source = Path(run) if run else find_lead_run()
    origin = str(source) if source else "stand-in (1 epoch on generated images; speed only)"
    source = source or stand_in_run()
    target = SCRATCH / "runs" / source.name
    if not (target / "model.onnx").is_file():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.onnx", "export.json"))
        xrays = sorted(str(p) for p in (SHARED / "chest_xray" / "test").rglob("*.jpeg"))[:32]
        export_onnx(target, images=xrays or None)
    return target, origin


def ensure_backend(run: Path, backend: str) -> None:
    """Quantise the scratch run first when the int8 model is asked for (export --int8)."""
    if backend != "onnx-int8":
        return
    from medclassify.inference.predictor import weights_hash
    from medclassify.inference.quantize import int8_is_current, quantize_int8
    from medclassify.run import load_run

    if not int8_is_current(load_run(run), weights_hash(run)):
        quantize_int8(run)


def write_result(name: str, result: dict) -> Path:
    import json
    import os

    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    return out
