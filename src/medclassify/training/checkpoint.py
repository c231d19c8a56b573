"""The per-epoch checkpoint of a training, kept in its partial run folder so that a killed training
resumes from its last completed epoch with the same final weights as an uninterrupted one.

Two files, no pickle: `checkpoint-<epoch>.safetensors` holds every tensor (model, optimiser state
with flattened keys, EMA weights, torch RNG states) and `checkpoint.json` everything else (loop
counters, epoch plan, early-stopping and best-checkpoint state, history rows, Python and NumPy RNG
states, optimiser scalars). `checkpoint.json` is written last and names its tensor file: it is the
commit point, so a kill at any moment leaves a consistent pair (the previous epoch's)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError
from ..io import read_json_object, write_json, write_with
from ..run import CHECKPOINT
from ..io import resolved
from ..errors import ConfigError

FORMAT = 1
_FIX = "start the training again with --overwrite (the checkpoint is deleted)."


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split("/", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = meta["param_groups"]
    for saved, current in zip(groups, optimizer.state_dict()["param_groups"]):
        for key, value in current.items():  # JSON turned tuples (AdamW's betas) into lists
            if isinstance(value, tuple) and isinstance(saved.get(key), list):
                saved[key] = tuple(saved[key])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(order_rng: np.random.Generator, augment_gen: torch.Generator, device: torch.device) -> tuple[dict, dict]:
    """Every random stream training draws from: Python's, NumPy's global and the epoch-order
    generator, torch's CPU generator (dropout), the augmentation generator and CUDA's."""
    tensors = {"rng/torch": torch.get_rng_state(), "rng/augment": augment_gen.get_state()}
    if device.type == "cuda":
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return tensors, {"python": [version, list(internal), gauss], "numpy": np_state,
                     "epoch_order": order_rng.bit_generator.state}


def restore_rng(tensors: dict, meta: dict, order_rng: np.random.Generator, augment_gen: torch.Generator,
                device: torch.device) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    augment_gen.set_state(tensors["rng/augment"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))]
    if device.type == "cuda" and cuda:
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = meta["numpy"]
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    order_rng.bit_generator.state = meta["epoch_order"]


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = prefix + "/"
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def save_checkpoint(folder: Path, epoch: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    name = f"checkpoint-{epoch}.safetensors"
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_with(folder / name, lambda tmp: save_file(flat, str(tmp), metadata={"epoch": str(epoch)}))
    write_json(folder / CHECKPOINT, {"format": FORMAT, "epoch": epoch, "tensors": name, **meta})
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / CHECKPOINT
    meta = read_json_object(path, "training checkpoint", _FIX)
    if meta.get("format") != FORMAT or not isinstance(meta.get("epoch"), int) or not isinstance(meta.get("tensors"), str):
        raise RunError(f"{path} is not a checkpoint this medclassify can resume (format {meta.get('format')!r}).", _FIX)
    tensor_path = folder / Path(meta["tensors"]).name
    try:
        tensors = load_file(str(tensor_path))
        from safetensors import safe_open

        with safe_open(str(tensor_path), "pt") as f:
            saved_epoch = (f.metadata() or {}).get("epoch")
    except (OSError, SafetensorError, ValueError) as e:
        raise RunError(f"{tensor_path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:100]}).", _FIX) from None
    if saved_epoch != str(meta["epoch"]):
        raise RunError(f"{tensor_path} does not belong to the checkpoint of epoch {meta['epoch']} in {path}.", _FIX)
    return tensors, meta


def config_snapshot(config: dict) -> dict:
    """The training's settings as compared on resume: paths resolved, so a resume from another
    working folder compares the same files."""
    return {k: str(resolved(v)) if k in ("data", "out", "weights") and v else v for k, v in config.items()}


def config_difference(saved: dict, current: dict, ignore: tuple[str, ...] = ("threads", "workers", "track", "register_model")) -> str | None:
    """The first setting that differs between the checkpointed training and this one, as a phrase."""
    from ..config import TrainConfig

    fields = TrainConfig.model_fields
    for key in sorted(set(saved) | set(current)):
        if key not in saved and key in fields and current.get(key) == fields[key].default:
            continue  # a setting newer than the checkpoint, left at its default (e.g. sync_bn)
        if key not in ignore and saved.get(key) != current.get(key):
            return f"--{key.replace('_', '-')} was {saved.get(key)!r} in the interrupted training and is {current.get(key)!r} now"
    return None


def check_resumable(folder: Path, current: dict) -> None:
    """Refuse, with the first differing setting, to resume a checkpoint made with other settings."""
    meta = read_json_object(folder / CHECKPOINT, "training checkpoint", _FIX)
    differs = config_difference(meta.get("config") or {}, current)
    if differs:
        raise ConfigError(f"Cannot resume the training in {folder}: {differs}.",
                          "resume with the same arguments, or start again with --overwrite.")
