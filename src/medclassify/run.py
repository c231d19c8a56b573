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
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data.preprocessing import Preprocessing
from .data.sources import Record
from . import io
from .errors import RunError

FORMAT_VERSION = 1
DAMAGED = "run.json was edited or damaged: restore it from a backup, or train the run again."


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # keys a newer medclassify adds are kept, not refused


class RunConfigRecord(_Open):
    model: str
    drop_rate: float = Field(0.0, ge=0, lt=1)


class CalibrationRecord(_Open):
    temperature: float = Field(gt=0, allow_inf_nan=False)


class OperatingPointRecord(_Open):
    threshold: float = Field(ge=0, le=1, allow_inf_nan=False)
    positive_class: str


class TTARecord(_Open):
    enabled: bool = False


class RunRecord(_Open):
    """run.json, validated once when a run is loaded. Only what later commands rely on is typed;
    everything else (data summary, audit, timings, ...) passes through untouched."""

    format_version: int = Field(ge=1)
    classes: list[str] = Field(min_length=2)
    preprocessing: Preprocessing
    config: RunConfigRecord
    calibration: CalibrationRecord | None = None
    operating_point: OperatingPointRecord | None = None
    tta: TTARecord | None = None

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "RunRecord":
        p = self.preprocessing
        if not 1 <= p.image_size <= 4096:
            raise ValueError(f"preprocessing.image_size must be between 1 and 4096 (got {p.image_size})")
        if len(p.mean) != p.channels or len(p.std) != p.channels:
            raise ValueError(f"preprocessing.mean and .std need {p.channels} value(s), one per channel")
        if not all(math.isfinite(s) and s > 0 for s in p.std) or not all(math.isfinite(m) for m in p.mean):
            raise ValueError("preprocessing.std must be positive and mean/std finite")
        return self


def _schema_error(info_path: Path, e: ValidationError) -> RunError:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    if err["type"] == "missing":
        return RunError(f"{info_path} has no '{where}'.", DAMAGED)
    got = f" (got {err['input']!r:.60})" if "input" in err and not isinstance(err["input"], dict) else ""
    msg = err["msg"].removeprefix("Value error, ")
    field = f" {where}:" if err["loc"] else ""
    return RunError(f"{info_path}:{field} {msg}{got}.", DAMAGED)


@dataclass
class Run:
    path: Path
    info: dict[str, Any]  # the raw run.json (callers update and rewrite it)
    record: RunRecord | None = None  # the validated view of `info` when it was loaded

    def __post_init__(self):
        if self.record is None:
            self.record = validate_run_info(self.info, self.path / "run.json")

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
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from .models import create_model

        model = create_model(self.model_name, len(self.classes), self.preprocessing.channels, pretrained="none",
                             drop_rate=self.info["config"].get("drop_rate", 0.0))
        fname = "model.safetensors" if which == "best" else "last.safetensors"
        file = self.path / fname
        try:
            state = load_file(str(file))
        except FileNotFoundError:
            raise RunError(f"Run {self.path} has no {fname}.", "the run is incomplete: train it again.") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise RunError(f"{file} is damaged or not a safetensors file ({str(e).splitlines()[0][:120]}).",
                           "restore the weights from a backup, or train the run again.") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise RunError(f"{file} does not fit run.json ({self.model_name}, {len(self.classes)} classes, "
                           f"{self.preprocessing.channels} channel(s)): {first[:200]}",
                           "run.json or the weights were changed: restore the run from a backup, or train it again.") from None
        return model.eval()

    def metrics(self, split: str) -> dict | None:
        p = self.path / "metrics" / f"{split}.json"
        return io.read_json_object(p, "metrics file", f"delete it and run `medclassify evaluate {self.path}` again.") if p.is_file() else None

    def save_metrics(self, split: str, metrics: dict) -> Path:
        if split != "external":  # the run's own splits carry the audit's leakage/conflict warnings
            metrics.setdefault("data_warnings", self.info.get("audit", {}).get("warnings", []))
        (self.path / "metrics").mkdir(exist_ok=True)
        p = self.path / "metrics" / f"{split}.json"
        _atomic_write(p, json.dumps(metrics, indent=2))
        return p


def validate_run_info(info: Any, info_path: Path) -> RunRecord:
    """run.json's content against the schema: a RunError naming the file and the fix, or the record."""
    if not isinstance(info, dict):
        raise RunError(f"{info_path} is not a run record (it holds a JSON {type(info).__name__}, not an object).", DAMAGED)
    version = info.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise RunError(
            f"Run {info_path.parent} has format version {version}, newer than this medclassify understands ({FORMAT_VERSION}).",
            "upgrade medclassify (pip install -U medclassify).",
        )
    try:
        return RunRecord.model_validate(info)
    except ValidationError as e:
        raise _schema_error(info_path, e) from None


def load_run(path: str | Path) -> Run:
    path = Path(path)
    info_path = path / "run.json"
    if not info_path.is_file():
        hint = "train one first with `medclassify train DATA --out RUN`."
        if path.is_file():
            raise RunError(f"{path} is a file, not a medclassify run directory.", hint)
        if path.exists():
            raise RunError(f"{path} is not a medclassify run directory (no run.json).", hint)
        raise RunError(f"Run directory {path} does not exist.", hint)
    info = io.read_json_object(info_path, "run record", DAMAGED)
    return Run(path, info, validate_run_info(info, info_path))


def write_split_csv(path: Path, records: list[Record]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "patient"])
        for r in records:
            w.writerow([r.path, r.label, r.split or "", r.patient or ""])


def read_split_csv(path: Path) -> list[Record]:
    fix = "this command needs the run's image list: restore split.csv from a backup, or train the run again."
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [Record(row["path"], row["label"], row["split"] or None, row["patient"] or None) for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise RunError(f"{path} is missing.", fix) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:100]}).", fix) from None
    except (KeyError, TypeError) as e:  # a missing column, or a short row (None)
        raise RunError(f"{path} is not a run's split list (column {e} missing or empty).", fix) from None


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
