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
from typing import Any, Iterable, Literal

import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data.preprocessing import Preprocessing
from .data.sources import Record
from . import io
from .errors import RunError
from .io import OutputError, check_replaceable_dir, commit_dir, remove_stale_partials, resolved, write_json, write_with
from .models import create_model

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


class OODLayerRecord(_Open):
    """One layer the guard reads: its columns [start, stop) of the features, the detector that scores
    them (absent in guards from before a layer could have its own: Mahalanobis) and its threshold."""

    name: str
    start: int = Field(ge=0)
    stop: int = Field(gt=0)
    threshold: float = Field(ge=0, allow_inf_nan=False)
    method: Literal["mahalanobis", "knn"] | None = None
    k: int | None = Field(None, ge=1)


class OODRecord(_Open):
    """The out-of-distribution guard (medclassify/ood): fitted, or why it is unavailable. `layers`
    (absent in a guard on the penultimate features alone) are combined as `combine` says."""

    status: str
    threshold: float | None = Field(None, allow_inf_nan=False)
    quantile: float | None = Field(None, gt=0, lt=1)
    layers: list[OODLayerRecord] | None = None
    combine: str | None = None


class AdaptationEstimate(_Open):
    """The source and the adapted model's estimated accuracy on the new images (ood/estimate.py)."""

    status: Literal["estimated", "unavailable"]
    source: float | None = Field(None, ge=0, le=1)
    adapted: float | None = Field(None, ge=0, le=1)
    gain: bool | None = None


class AdaptationRecord(_Open):
    """What `medclassify adapt` re-estimated the BatchNorm statistics on (training/adapt.py)."""

    method: str
    source_run: str
    images_folder: str
    images: int = Field(ge=1)
    fingerprint: str
    guard: str
    alpha: float = Field(ge=0, le=1)
    applied: bool = True  # false: no shift was found, or no gain estimated; the source's statistics were kept
    estimate: AdaptationEstimate | None = None


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
    ood: OODRecord | None = None
    adaptation: AdaptationRecord | None = None

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
    info: dict[str, Any]  # the raw run.json; change it only through `update`
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

    @property
    def temperature(self) -> float:
        """The calibration temperature predict divides logits by (1 until evaluate fits one)."""
        return self.record.calibration.temperature if self.record.calibration else 1.0

    @property
    def tta(self) -> bool:
        """Whether flip test-time augmentation was chosen on the validation split (see training/tta.py)."""
        return bool(self.record.tta and self.record.tta.enabled)

    def update(self, **fields: Any) -> None:
        """Record what a later verb adds (calibration, calibration_skipped, tta, operating_point,
        exports, ...): a value of None removes the key. The result is validated against the schema
        before run.json is rewritten (atomically), so a run on disk is never left invalid."""
        info = {k: v for k, v in {**self.info, **fields}.items() if v is not None}
        record = validate_run_info(info, self.path / "run.json")
        io.write_json(self.path / "run.json", info)
        self.info.clear()
        self.info.update(info)
        self.record = record

    def records(self, split: str | None = None) -> list[Record]:
        return [r for r in read_split_csv(self.path / "split.csv") if split is None or r.split == split]

    def build_model(self, which: str = "best") -> nn.Module:
        from safetensors import SafetensorError
        from safetensors.torch import load_file


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
        io.write_text(p, json.dumps(metrics, indent=2))
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
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return [Record(row["path"], row["label"], row["split"] or None, row["patient"] or None) for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise RunError(f"{path} is missing.", fix) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:100]}).", fix) from None
    except (KeyError, TypeError) as e:  # a missing column, or a short row (None)
        raise RunError(f"{path} is not a run's split list (column {e} missing or empty).", fix) from None


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file


    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_with(path, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


CHECKPOINT = "checkpoint.json"  # the per-epoch checkpoint's commit point (see training/checkpoint.py)
CHECKPOINT_TENSORS = "checkpoint-*.safetensors"
LOCK = "lock.json"
# What a partial training folder may hold: the run's own files, the checkpoint, and atomic-write temporaries.
_OURS = ("run.json", "config.yaml", "model.safetensors", "last.safetensors", "ood.safetensors", "split.csv", "skipped.csv", "history.csv", "metrics",
         CHECKPOINT, LOCK, CHECKPOINT_TENSORS, ".*.partial-*")


def _all_ours(folder: Path) -> bool:
    from fnmatch import fnmatch

    return all(any(fnmatch(p.name, pattern) for pattern in _OURS) for p in folder.iterdir())


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot) and the boot's id: with the PID, this names
    one process for ever, so a PID reused after a reboot or a wrap-around is not mistaken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def _lock_owner(folder: Path) -> int | None:
    """The PID of the live process that holds `folder`'s lock, else None."""
    import socket

    try:
        lock = json.loads((folder / LOCK).read_text())
        pid = int(lock["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if lock.get("host") != socket.gethostname():
        return pid  # another machine's process (a shared disk): assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid if lock.get("start") in (None, _process_start(pid)) else None


def checkpointed_epoch(folder: Path) -> int | None:
    """The last completed epoch checkpointed in a partial run folder, or None."""
    try:
        epoch = json.loads((folder / CHECKPOINT).read_text()).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


class RunWriter:
    """Builds a run in the hidden sibling folder `.NAME.partial` and moves it into place only when
    complete, so a failed or interrupted training never leaves a half-written run where the user
    asked for one.

    Training checkpoints every completed epoch into that folder. A training that was killed
    (SIGKILL, out of memory, power loss) or interrupted leaves it behind, resumable with `resume=True`;
    a fresh training refuses to delete it unless `overwrite=True`. A lock file with the owner's PID
    keeps two trainings out of one folder."""

    def __init__(self, out: str | Path, overwrite: bool = False, resume: bool = False,
                 protected: Iterable[str | Path] = ()):
        import socket


        self.final = Path(out)
        self.overwrite = overwrite
        self.protected = [Path(p) for p in protected]
        check_replaceable_dir(self.final, overwrite, protected=self.protected)
        self.path = self.final.parent / f".{self.final.name}.partial"
        self.resuming = False
        self.training_started = False  # set by the fit loop: failures from then on report the kept checkpoint
        if self.path.is_symlink() or self.path.is_file():
            raise OutputError(f"{self.path} exists and is not a training folder medclassify made.",
                              "move it away, or choose another --out.")
        if self.path.is_dir():
            owner = _lock_owner(self.path)
            if owner is not None:
                raise OutputError(f"Another training (pid {owner}) is writing {self.final} (in {self.path}).",
                                  "wait for it to finish or stop it, or choose another --out.")
            epoch = checkpointed_epoch(self.path)
            if epoch is not None and resume:
                self.resuming = True
            elif epoch is not None and not overwrite:
                raise OutputError(f"{self.final} has an interrupted training, checkpointed after epoch {epoch}, in {self.path}.",
                                  "pass --resume (with the same arguments) to continue it, or --overwrite to start again and delete it.")
            elif not _all_ours(self.path):
                raise OutputError(f"{self.path} holds files medclassify did not write there.",
                                  "move that folder away, or choose another --out.")
            else:  # killed before its first epoch ended (nothing to resume), or --overwrite
                shutil.rmtree(self.path)
        remove_stale_partials(self.final.parent, self.final.name)  # the PID-named partials of older versions
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / LOCK, {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())})

    def protect(self, inputs: Iterable[str]) -> None:
        """Refuse, before training, to replace an --out folder that holds any input file (a labels CSV
        or a YAML spec can name images anywhere)."""
        if not (self.overwrite and self.final.is_dir()):
            return
        final = str(resolved(self.final))
        for folder in {os.path.dirname(os.path.abspath(p)) for p in inputs}:
            f = str(resolved(folder))
            if f == final or f.startswith(final + os.sep):
                raise OutputError(f"--out {self.final} holds images of the dataset ({folder}); --overwrite would delete them.",
                                  "choose an --out folder outside the dataset.")

    @property
    def checkpointed_epoch(self) -> int | None:
        return checkpointed_epoch(self.path)

    def commit(self) -> Path:
        """Move the finished run into place; an earlier run there (checked again: it must still be ours
        to replace) is removed only once the new one is in place."""
        check_replaceable_dir(self.final, self.overwrite, protected=self.protected)
        empty = self.final.is_dir() and not any(self.final.iterdir())
        commit_dir(self.path, self.final, replace=self.overwrite or empty)  # on failure the checkpoint stays resumable
        for name in (CHECKPOINT, CHECKPOINT_TENSORS, LOCK):
            for f in self.final.glob(name):
                f.unlink(missing_ok=True)
        return self.final

    def abort(self) -> bool:
        """After a failure or an interrupt: keep the folder when it holds a checkpoint (it can be
        resumed), else remove it. Returns whether it was kept."""
        if self.checkpointed_epoch is not None:
            (self.path / LOCK).unlink(missing_ok=True)
            return True
        shutil.rmtree(self.path, ignore_errors=True)
        return False
