"""The run directory: a self-contained record of one trained model that every later command takes.

    run.json            format version, config, classes, preprocessing, data summary, timings
    model.safetensors   best weights (plain tensors, never a pickled object)
    last.safetensors    weights after the last epoch
    split.csv           every image with its label, split and patient: evaluation is reproducible
    skipped.csv         files that could not be decoded, with the reason
    history.csv         one row per epoch
    metrics/<split>.json
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from .data.preprocessing import Preprocessing
from .data.sources import Record
from . import io
from .errors import RunError

FORMAT_VERSION = 1


@dataclass
class Run:
    path: Path
    info: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(**self.info["preprocessing"])

    @property
    def model_name(self) -> str:
        return self.info["config"]["model"]

    def records(self, split: str | None = None) -> list[Record]:
        return [r for r in read_split_csv(self.path / "split.csv") if split is None or r.split == split]

    def build_model(self, which: str = "best") -> nn.Module:
        from safetensors.torch import load_file

        from .models import create_model

        model = create_model(self.model_name, len(self.classes), self.preprocessing.channels, pretrained="none",
                             drop_rate=self.info["config"].get("drop_rate", 0.0))
        fname = "model.safetensors" if which == "best" else "last.safetensors"
        try:
            model.load_state_dict(load_file(str(self.path / fname)))
        except FileNotFoundError:
            raise RunError(f"Run {self.path} has no {fname}.", "the run is incomplete: train it again.") from None
        return model.eval()

    def metrics(self, split: str) -> dict | None:
        p = self.path / "metrics" / f"{split}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def save_metrics(self, split: str, metrics: dict) -> Path:
        if split != "external":  # the run's own splits carry the audit's leakage/conflict warnings
            metrics.setdefault("data_warnings", self.info.get("audit", {}).get("warnings", []))
        (self.path / "metrics").mkdir(exist_ok=True)
        p = self.path / "metrics" / f"{split}.json"
        _atomic_write(p, json.dumps(metrics, indent=2))
        return p


def load_run(path: str | Path) -> Run:
    path = Path(path)
    info_path = path / "run.json"
    if not info_path.is_file():
        hint = "train one first with `medclassify train DATA --out RUN`."
        if path.exists():
            raise RunError(f"{path} is not a medclassify run directory (no run.json).", hint)
        raise RunError(f"Run directory {path} does not exist.", hint)
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{info_path} is unreadable ({e}).", "the run is damaged: train it again.") from None
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RunError(
            f"Run {path} has format version {version}, newer than this medclassify understands ({FORMAT_VERSION}).",
            "upgrade medclassify (pip install -U medclassify).",
        )
    return Run(path, info)


def write_split_csv(path: Path, records: list[Record]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "patient"])
        for r in records:
            w.writerow([r.path, r.label, r.split or "", r.patient or ""])


def read_split_csv(path: Path) -> list[Record]:
    with open(path, newline="") as f:
        return [Record(row["path"], row["label"], row["split"] or None, row["patient"] or None) for row in csv.DictReader(f)]


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    io.write_text(path, text)


def write_json(path: Path, obj: Any) -> None:
    io.write_json(path, obj)


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not ours to remove
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunWriter:
    """Builds a run in a hidden sibling folder and moves it into place only when complete, so a
    failed or interrupted training never leaves a half-written run where the user asked for one."""

    def __init__(self, out: str | Path, overwrite: bool = False):
        self.final = Path(out)
        if self.final.exists() and any(self.final.iterdir()) and not overwrite:
            raise RunError(f"Output folder {self.final} already exists and is not empty.", "choose another --out or pass --overwrite.")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        for stale in self.final.parent.glob(f".{self.final.name}.partial-*"):
            if not _pid_alive(stale.name.rsplit("-", 1)[-1]):  # left by a killed process
                shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)

    def commit(self) -> Path:
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.path, self.final)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
