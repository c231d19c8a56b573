"""Training configuration: every knob of a run, validated once, saved in the run directory."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from .errors import ConfigError

# The recommended recipe: what a bare `medclassify train DATA --out RUN` does. Chosen on validation
# splits with benchmarks/accuracy.py (figures in the README and the closing note of issue 2).
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 160
DEFAULT_TIME_BUDGET = 15 * 60.0
DEFAULT_MAX_EPOCHS = 30


class TrainConfig(BaseModel):
    data: str
    out: str
    model: str = DEFAULT_MODEL
    pretrained: Literal["auto", "imagenet", "none", "hub"] = "auto"
    weights: str | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    resize: Literal["pad", "squash"] = "pad"
    channels: Literal["auto", 1, 3] = "auto"
    normalize: Literal["fixed", "per-image", "equalize"] = "fixed"
    augment: str = "medical"
    epochs: int = Field(DEFAULT_MAX_EPOCHS, ge=1)
    time_budget: float | None = DEFAULT_TIME_BUDGET  # seconds of training; sizes the epochs
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = Field(None, gt=0)  # None: 1e-3 for AdamW, 1e-2 for SGD
    weight_decay: float = Field(0.01, ge=0)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.5, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    imbalance: Literal["none", "weights", "sqrt-weights", "sampler"] = "sqrt-weights"
    drop_rate: float = Field(0.2, ge=0, lt=1)
    ema: bool = False  # validate, keep and ship an exponential moving average of the weights
    # Feature stages held fixed (timm's count, stem included). None: 2 when fine-tuning pretrained
    # weights of a model that describes its stages, else 0.
    freeze: int | None = Field(None, ge=0)
    early_stopping: int = Field(5, ge=0)  # patience in epochs; 0 turns it off
    monitor: Literal["balanced_accuracy", "accuracy", "macro_f1", "auc", "loss"] = "balanced_accuracy"
    seed: int = 0
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    patient_pattern: str | None = None
    splits: str | None = None  # which top-level folder is which split: "train=Training,test=External"
    dedupe: bool = False  # keep only the held-out copy of cross-split duplicates; drop conflicting-label groups
    strict: bool = False  # refuse to train on leakage or conflicting labels
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int | None = None  # decode processes for the cache; default: all cores
    threads: int | None = None  # torch intra-op threads; default: all cores
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
        from .presets import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown augmentation preset {v!r}; use one of: {', '.join(PRESETS)}")
        return v

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if not 16 <= v <= 1024:
            raise ValueError("image size must be between 16 and 1024 pixels")
        return v


def parse_duration(text: str | float | int | None) -> float | None:
    """'15m', '90s', '1h30m', '900' -> seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip().lower()
    if s in ("0", "none", "off"):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|min|s|sec)", s)
    if not parts or "".join(a + b for a, b in parts) != re.sub(r"\s+", "", s):
        raise ConfigError(f"Cannot read time budget {text!r}.", "write it like 15m, 90s or 1h30m.")
    mult = {"h": 3600, "m": 60, "min": 60, "s": 1, "sec": 1}
    return sum(float(a) * mult[b] for a, b in parts)


def parse_overrides(pairs: list[str], given: dict | None = None) -> dict:
    """`--set KEY=VALUE` pairs -> TrainConfig values, each coerced to its field's type (pydantic;
    a JSON literal when the plain string does not fit, 'none' for an optional setting). The model
    as a whole is validated later, with the other flags."""
    import difflib
    import json

    from pydantic import TypeAdapter, ValidationError

    fields = {k: f for k, f in TrainConfig.model_fields.items() if k not in ("data", "out")}
    out: dict = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"Cannot read --set {pair!r}.", "write it as KEY=VALUE, e.g. --set seed=1.")
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.7)
            fix = f"did you mean --set {near[0]}={value}?" if near else f"use one of: {', '.join(fields)}."
            raise ConfigError(f"Unknown setting {key!r} in --set {pair}.", fix)
        if key in out or (given and key in given):
            raise ConfigError(f"{key} is given twice (--set {pair} and another flag).", "give each setting once.")
        if key == "time_budget":
            out[key] = parse_duration(value)
            continue
        adapter = TypeAdapter(fields[key].annotation)
        candidates: list = [value]
        if value.strip().lower() in ("none", "null"):
            candidates.insert(0, None)
        try:
            candidates.append(json.loads(value))
        except ValueError:
            pass
        for c in candidates:
            try:
                out[key] = adapter.validate_python(c)
                break
            except ValidationError as e:
                first = e.errors()[0]["msg"]
        else:
            raise ConfigError(f"Invalid --set {pair}: {first}.", f"see `medclassify train --help` for {key.replace('_', '-')}.")
    return out
