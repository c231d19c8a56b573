"""Every knob of a run, validated once: `TrainConfig` (training, saved in the run directory) and
`PredictOptions` (inference). The `train` command's options, the Python API, cascades and the
benchmarks are all built from these classes, so their names, types and defaults are written here only."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError
from .presets import PRESETS

# The recommended recipe: what a bare `medclassify train DATA --out RUN` does. Its length is a fixed
# number of epochs (per model, below), never the clock: the same data, seed and version give the same
# model on any machine. A time budget is an explicit opt-in (--time-budget 15m).
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 160
DEFAULT_EPOCHS = 10  # about what the old 15-minute budget ran on a quiet 2-core machine (~5k images, 160 px)
RECIPE_EPOCHS = {"seed_cnn": 20}  # small models from scratch need more passes; anything else: DEFAULT_EPOCHS
DEFAULT_MAX_EPOCHS = 30  # the cap when a time budget sizes the run and no --epochs is given


def recipe_epochs(model: str) -> int:
    return RECIPE_EPOCHS.get(model, DEFAULT_EPOCHS)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="Dataset: a folder with one sub-folder per class (optionally inside train/val/test), "
                                  "or a labels CSV.")
    out: str = Field(description="Run directory to create.")
    model: str = Field(DEFAULT_MODEL, description="Architecture: seed_cnn, efficientnet_lite0/1/2, or any timm name.")
    pretrained: Literal["auto", "imagenet", "none", "hub"] = Field(
        "auto", description="Starting weights: imagenet (offline, efficientnet_lite*), hub (online), none; "
                            "auto picks imagenet where it is offline.")
    weights: str | None = Field(None, description="Local state-dict or safetensors file to start from.")
    image_size: int = Field(DEFAULT_IMAGE_SIZE, description="Square input size in pixels (16-1024).")
    resize: Literal["pad", "squash"] = Field("pad", description="pad (keep the aspect ratio) or squash.")
    channels: Literal["auto", 1, 3] = Field("auto", description="Input channels: auto, 1 or 3.")
    normalize: Literal["fixed", "per-image", "equalize"] = Field(
        "fixed", description="fixed (model mean/std), per-image standardisation, or equalize (per-image histogram "
                             "equalisation, then fixed).")
    augment: str = Field("medical", description="Augmentation preset: none, light, medical, robust.")
    epochs: int | None = Field(None, ge=1, description=f"Epochs to train, the learning-rate schedule always run to its "
                               f"end. Default: the recipe's fixed count ({DEFAULT_EPOCHS}; {RECIPE_EPOCHS['seed_cnn']} "
                               f"for seed_cnn); with --time-budget, the most epochs (default {DEFAULT_MAX_EPOCHS}).")
    time_budget: float | None = Field(None, description="Opt-in: size the epochs to this machine's speed so training "
                                      "takes about this long, e.g. 15m, 90s, 1h30m (seconds in Python). The result then "
                                      "depends on the machine and its load. Default: off.")
    batch_size: int = Field(32, ge=1, description="Images per optimiser step (under torchrun: over all processes, "
                            "each taking batch-size / processes).")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimiser.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate. Default: 1e-3 for adamw, 1e-2 for sgd.")
    weight_decay: float = Field(0.01, ge=0, description="Weight decay (not on biases and norms).")
    scheduler: Literal["cosine", "step", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    warmup_epochs: float = Field(0.5, ge=0, description="Linear learning-rate warm-up, in epochs.")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    imbalance: Literal["none", "weights", "sqrt-weights", "sampler"] = Field(
        "sqrt-weights", description="Class-imbalance handling: loss weights, their square root, or a balanced sampler.")
    drop_rate: float = Field(0.2, ge=0, lt=1, description="Dropout before the classifier head.")
    ema: bool = Field(False, description="Keep an exponential moving average of the weights (about one epoch long) and "
                                         "validate and ship it.")
    freeze: int | None = Field(None, ge=0, description="Hold the first N feature stages (as timm counts them, stem "
                               "included) of a pretrained backbone fixed. Default: 2 when fine-tuning a model that "
                               "describes its stages, else 0.")
    # Default chosen with benchmarks/selection.py (README, Benchmarks): across seeds, the average was
    # at least as good as the last epoch and steadier; the best validation epoch was the noisiest pick.
    select: Literal["last", "average", "best"] = Field(
        "average", description="Weights that ship: average (mean of the weights at the end of the last "
                               "--average-epochs epochs of the completed schedule, at most its second half), last "
                               "(end of the schedule) or best (best validation --monitor; noisy on small validation "
                               "splits).")
    average_epochs: int = Field(3, ge=2, description="Epochs averaged by --select average.")
    bn_refresh_images: int = Field(2048, ge=0, description="Training images (unaugmented) on which the BatchNorm "
                                   "statistics of averaged weights are re-estimated (--select average); 0 keeps "
                                   "the averaged statistics.")
    early_stopping: int = Field(0, ge=0, description="Patience in epochs (0: off). It cuts the schedule before its "
                                "decay ends; use it with --select best.")
    monitor: Literal["balanced_accuracy", "accuracy", "macro_f1", "auc", "loss"] = Field(
        "balanced_accuracy", description="Validation metric of --select best and early stopping.")
    seed: int = Field(0, description="Random seed of the split, the initial weights, the augmentation and the order.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the images held out for validation.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of the images held out for testing.")
    patient_pattern: str | None = Field(None, description="Regex with a named group 'patient' (or preset: kermany, "
                                        "cnmc) to keep each patient in one split.")
    splits: str | None = Field(None, description="Which top-level folder is which split, e.g. "
                               "train=Training,test=External (other folders are left out).")
    dedupe: bool = Field(False, description="Keep only the held-out copy of duplicates that cross splits (test, then "
                         "val) and drop duplicate groups with conflicting labels (counted).")
    strict: bool = Field(False, description="Refuse to train when splits leak or duplicate labels conflict.")
    # Off by default: on the CPU PyTorch's SyncBatchNorm does not run at all, and no GPU measurement
    # has yet shown it helps (README, Scaling up).
    sync_bn: bool = Field(False, description="Under torchrun on CUDA: batch-norm statistics over the global batch "
                          "(SyncBatchNorm) instead of each process's share of it.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Arithmetic precision of training.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device to train on.")
    workers: int | None = Field(None, ge=1, description="Decode processes for the image cache. Default: all cores.")
    threads: int | None = Field(None, ge=1, description="CPU threads for PyTorch. Default: all cores.")
    ood_quantile: float = Field(0.95, gt=0, lt=1, description="Out-of-distribution guard: the share of validation "
                                "images that count as in-distribution (sets its threshold).")
    track: Literal["none", "mlflow"] = Field("none", description=(
        "Log settings, epochs, test figures and files to MLflow (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME); "
        "needs pip install 'medclassify[track]'."))
    # Not `register`: that name is taken by pydantic's BaseModel (ABCMeta.register).
    register_model: str | None = Field(None, description=(
        "With --track mlflow: register the run's model folder (weights, run.json, ONNX once exported) under this name "
        "in the MLflow model registry."))

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown augmentation preset {v!r}; use one of: {', '.join(PRESETS)}")
        return v

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if not 16 <= v <= 1024:
            raise ValueError("image size must be between 16 and 1024 pixels")
        return v

    @field_validator("time_budget", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("time_budget")
    @classmethod
    def _budget_positive(cls, v: float | None) -> float | None:
        return v if v else None  # 0 turns the budget off

    @model_validator(mode="after")
    def _epochs(self) -> "TrainConfig":
        """The one epochs/budget rule of every entry point: an explicit `epochs` is exactly that many
        epochs; without it, the recipe's count, or the cap when a time budget was asked for."""
        if self.epochs is None:
            self.epochs = DEFAULT_MAX_EPOCHS if self.time_budget else recipe_epochs(self.model)
        return self


def parse_duration(text: str | float | int | None) -> float | None:
    """'15m', '90s', '1h30m' -> seconds; 'off', 'none' or '0' -> None. A bare number is refused: it
    was read as seconds, and `--time-budget 15` meant 15 minutes to everyone who typed it."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip().lower()
    if s in ("0", "none", "off"):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", s):
        raise ConfigError(f"Time budget {text!r} has no unit.", f"write {s}m for minutes or {s}s for seconds "
                                                                 "(or 'off').")
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|min|m|sec|s)", s)
    if not parts or "".join(a + b for a, b in parts) != re.sub(r"\s+", "", s):
        raise ConfigError(f"Cannot read time budget {text!r}.", "write it like 15m, 90s or 1h30m (or 'off').")
    mult = {"h": 3600, "m": 60, "min": 60, "s": 1, "sec": 1}
    return sum(float(a) * mult[b] for a, b in parts)


def settable_fields() -> dict:
    return {k: f for k, f in TrainConfig.model_fields.items() if k not in ("data", "out")}


def nearest_key(key: str) -> str | None:
    near = difflib.get_close_matches(key, list(settable_fields()), n=1, cutoff=0.6)
    return near[0] if near else None


def coerce_setting(key: str, value: Any, where: str) -> Any:
    """One setting from text (--set, a command-line flag) or YAML, coerced to its field's type (pydantic;
    a JSON literal when the plain string does not fit, 'none' for an optional setting)."""
    import json

    from pydantic import TypeAdapter, ValidationError

    if key == "time_budget":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            raise ConfigError(f"Time budget {value!r} in {where} has no unit.", f"write {value}m or {value}s (or off).")
        return parse_duration(value)
    adapter = TypeAdapter(settable_fields()[key].annotation)
    candidates: list = [value]
    if isinstance(value, str):
        if value.strip().lower() in ("none", "null"):
            candidates.insert(0, None)
        try:
            candidates.append(json.loads(value))
        except ValueError:
            pass
    first = "invalid value"
    for c in candidates:
        try:
            return adapter.validate_python(c)
        except ValidationError as e:
            first = e.errors()[0]["msg"]
    raise ConfigError(f"Invalid {where}: {first}.", f"see `medclassify train --help` for --{key.replace('_', '-')}.")


def parse_overrides(pairs: list[str], given: dict | None = None) -> dict:
    """`--set KEY=VALUE` pairs -> TrainConfig values, each coerced to its field's type. The model as a
    whole is validated later, with the other flags."""
    fields = settable_fields()
    out: dict = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"Cannot read --set {pair!r}.", "write it as KEY=VALUE, e.g. --set seed=1.")
        if key not in fields:
            near = nearest_key(key)
            fix = f"did you mean --set {near}={value}?" if near else f"use one of: {', '.join(fields)}."
            raise ConfigError(f"Unknown setting {key!r} in --set {pair}.", fix)
        if key in out or (given and key in given):
            raise ConfigError(f"{key} is given twice (--set {pair} and another flag).", "give each setting once.")
        out[key] = coerce_setting(key, value, f"--set {pair}")
    return out


def load_config_file(path: str | Path) -> dict:
    """`--config FILE.yaml`: a mapping of TrainConfig fields (data and out included, if wanted)."""
    import yaml

    path = Path(path)
    fix = "write a YAML mapping of `medclassify train` settings, e.g. `epochs: 10` (see a run's config.yaml)."
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"Cannot read the config file {path} ({e.strerror or e}).", "pass a readable YAML file.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]}).", fix) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds a {type(raw).__name__}, not a mapping of settings.", fix)
    out: dict = {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k in ("data", "out"):
            out[k] = str(value)
            continue
        if k not in settable_fields():
            near = nearest_key(k)
            raise ConfigError(f"Unknown setting {key!r} in {path}.", f"did you mean {near}?" if near
                              else f"use one of: {', '.join(settable_fields())}.")
        out[k] = coerce_setting(k, value, f"{key} in {path}")
    return out


Backend = Literal["auto", "onnx", "onnx-int8", "torch"]


class PredictOptions(BaseModel):
    """How a trained run predicts: shared by `predict`, `serve`, cascades and `Predictor`."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field("auto", description="auto (ONNX Runtime when the run has model.onnx), onnx, onnx-int8 "
                                                 "(after export --int8) or torch.")
    tta: bool | None = Field(None, description="Test-time augmentation: average the image and its mirror. Default: "
                                               "what the run chose on its validation split.")
    abstain_below: float | None = Field(0.6, ge=0, le=1, description="Flag predictions whose top probability is under this.")
    threads: int | None = Field(None, ge=1, description="CPU threads for inference. Default: all cores (serve: cores / workers).")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")


def predict_default(name: str) -> Any:
    return PredictOptions.model_fields[name].default
