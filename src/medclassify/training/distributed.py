"""Data-parallel training under torchrun (PyTorch's own launcher): the process group from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, ...), NCCL on CUDA and gloo on the CPU, and the few
collectives the fit loop needs: a barrier, a broadcast of rank 0's decisions, a gather of validation
predictions. Without torchrun's environment (or with one process) every helper is a no-op and
training is the single-process code path, unchanged.

Who does what: rank 0 writes the run directory, checkpoints, prints and tracks; every rank trains on
its shard of the one seeded epoch order; each node's local rank 0 builds the image cache while the
node's other ranks wait. A rank that fails exits with its one-line error; the others, blocked in a
collective, get an error from the backend (or torchrun's SIGTERM) and exit too, never hang: every
collective has a finite timeout."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError, MedClassifyError, RunError

DEFAULT_TIMEOUT_S = 1800  # covers a node's cache build, which the node's other ranks wait for
TIMEOUT_ENV = "MEDCLASSIFY_DIST_TIMEOUT"
_RANK_STRIDE = 1_000_003  # per-rank random streams: seed + stride * rank (+ epoch), never rank 0's


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds.",
                          f"set {TIMEOUT_ENV} to the seconds a rank may wait for the others (default {DEFAULT_TIMEOUT_S}).")
    return value


class PeerFailure(RunError):
    """This rank stopped because another one did (its error is printed by that rank): rank 0 says so in
    one line, the other ranks exit quietly (`echo` False), all with a non-zero status."""

    def __init__(self, message: str, fix: str, echo: bool = True):
        super().__init__(message, fix)
        self.echo = echo


@dataclass
class Dist:
    """This process's place in the job. `Dist()` is one process: every collective returns its input."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(device_ids=[self.device.index] if self.device is not None and self.device.type == "cuda" else None)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable value; the others pass a placeholder)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def all_gather(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (float64)."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's number on every rank, as one small tensor collective (cheap enough for every step)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.broadcast(t, src=0)
        return float(t.item())

    def _comm_device(self) -> torch.device:
        return self.device if self.device is not None and self.device.type == "cuda" else torch.device("cpu")

    def describe(self, batch_size: int) -> dict:
        """run.json's "distributed" record."""
        import torch.distributed as dist

        return {"world_size": self.world, "backend": dist.get_backend() if dist.is_initialized() else None,
                "global_batch": self.rank_batch(batch_size) * self.world, "batch_per_process": self.rank_batch(batch_size)}

    # --- the fit loop's uses ---------------------------------------------------------------------

    def shard(self, order: np.ndarray) -> np.ndarray:
        """This rank's part of an epoch order that is the same on every rank: padded by wrapping round
        to a multiple of the world size (every rank then takes as many steps), then every world-th
        index from this rank's. Rank r's k-th batch of b holds the global order's k-th batch of
        b * world, so the ranks' batches together are one process's batch."""
        if not self.enabled:
            return order
        pad = (-len(order)) % self.world
        if pad:
            order = np.concatenate([order, np.resize(order, pad)])
        return order[self.rank :: self.world]

    def shard_len(self, n: int) -> int:
        return -(-n // self.world)

    def rank_batch(self, batch_size: int) -> int:
        """Images per step on this rank: `--batch-size` is the global batch, split over the ranks."""
        if not self.enabled:
            return batch_size
        if batch_size < self.world:
            raise ConfigError(f"--batch-size {batch_size} is the global batch, smaller than the {self.world} processes.",
                              f"use --batch-size {self.world} or more (a multiple of {self.world}).")
        return batch_size // self.world

    def rank_seed(self, seed: int, epoch: int = 0) -> int:
        """The augmentation and dropout seed of a rank other than 0 for an epoch: derived, not carried,
        so a resumed run draws the same numbers without saving every rank's generators."""
        return (seed + _RANK_STRIDE * self.rank + 7919 * epoch) % (2**63)

    def reseed(self, gen: torch.Generator, seed: int, epoch: int) -> None:
        """Ranks other than 0 draw their own augmentation and dropout numbers, reseeded every epoch
        (rank 0 keeps one process's streams, saved in the checkpoint)."""
        if self.enabled and not self.is_main:
            s = self.rank_seed(seed, epoch)
            gen.manual_seed(s)
            torch.manual_seed(s)

    def merge_epoch_stats(self, stats: dict) -> dict:
        """An epoch's training loss and accuracy over every rank's images (each rank saw as many)."""
        if not self.enabled:
            return stats
        loss, correct, images = self.all_sum([stats["loss"] * stats["images"], stats["accuracy"] * stats["images"],
                                              float(stats["images"])])
        return {**stats, "loss": loss / images, "accuracy": correct / images, "images": int(images)}

    def sync_buffers(self, *modules: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) on every rank: DDP broadcasts them at the start of
        each forward, so after the last step each rank holds its own batch's update."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for module in modules:
            for b in module.buffers():
                dist.broadcast(b.data, src=0)

    def gather_predictions(self, n: int, mine: np.ndarray, probs: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every rank's (rows, probabilities, logits) back in the order of the n validation images."""
        if not self.enabled:
            return probs, logits
        parts = [p for p in self.all_gather((mine, probs, logits)) if len(p[0])]
        if not parts:  # no validation images at all
            return probs, logits
        k = parts[0][1].shape[1]
        all_p, all_z = np.zeros((n, k), parts[0][1].dtype), np.zeros((n, k), parts[0][2].dtype)
        for rows, p, z in parts:
            all_p[rows], all_z[rows] = p, z
        return all_p, all_z

    def wrap(self, model: nn.Module, sync_bn: bool) -> nn.Module | None:
        """The DDP module the training steps run through (gradients all-reduced), None in one process."""
        if not self.enabled:
            return None
        from torch.nn.parallel import DistributedDataParallel

        if sync_bn:  # CUDA only (checked in start)
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and keys: the optimiser still holds them
        cuda = self.device is not None and self.device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)


class GlobalBatchLoss(nn.Module):
    """One process's loss of the global batch, computed on its shards: each rank's summed (class
    weighted, label smoothed) cross-entropy over the global batch's normaliser (the sum of the class
    weights of its labels, or its size), times the world size, so that DDP's mean of the ranks'
    gradients is the gradient of the single-process loss. The normaliser is one small all-reduce."""

    def __init__(self, weight: torch.Tensor | None, label_smoothing: float, world: int):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, reduction="sum")
        self.world = world

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        weight = self.ce.weight
        norm = (weight[y].sum() if weight is not None else torch.tensor(float(len(y)), device=logits.device)).detach()
        norm = norm.to(torch.float64).clone()
        dist.all_reduce(norm)
        return self.ce(logits, y) * self.world / norm.to(logits.dtype)


def peer_failure(e: BaseException, d: Dist) -> PeerFailure | None:
    """A collective that failed because another rank died or hung, as one line (None: another error)."""
    import torch.distributed as dist

    text = str(e)
    lost = isinstance(e, getattr(dist, "DistError", ())) or (
        isinstance(e, RuntimeError) and any(s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed",
                                                                "Broken pipe", "timed out", "Timed out")))
    if not (d.enabled and lost):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    reason = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:160]  # gloo's source location off
    return PeerFailure(f"Another process of the distributed training stopped (rank {d.rank} saw: {reason}).",
                       "see that process's error above (or torchrun's report of its exit code), fix it, and run the same "
                       "torchrun command with --resume.", echo=d.is_main)


def under_torchrun() -> bool:
    """torchrun started this process as one of several (read from the environment, no process group needed)."""
    return _from_env()[1] > 1


def _from_env() -> tuple[int, int, int]:
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        return 0, 1, 0


def start(device_name: str = "auto", sync_bn: bool = False, batch_size: int | None = None) -> Dist:
    """Join torchrun's process group, or `Dist()` without torchrun (or with one process). Settings
    every rank would refuse alike are refused here, before the group exists, so that only rank 0
    prints them (cli.main)."""
    import torch.distributed as dist

    rank, world, local_rank = _from_env()
    if world <= 1:
        return Dist()
    device = _device(device_name, local_rank)
    if sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU.",
                          "leave --sync-bn off (the default) for CPU training.")
    if batch_size is not None:
        Dist(rank, world).rank_batch(batch_size)
    if dist.is_initialized():  # a caller (or an earlier training in this process) set it up
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if not dist.is_available():
        raise ConfigError("torchrun started this training, but this PyTorch has no torch.distributed.",
                          "install a PyTorch build with distributed support, or run without torchrun.")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=dt.timedelta(seconds=timeout_seconds()),
                            device_id=device if cuda else None)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _device(name: str, local_rank: int) -> torch.device:
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if not cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible.", "use --device cpu or auto.")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"Local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}.",
                          f"start at most {torch.cuda.device_count()} processes per node (--nproc-per-node).")
    return torch.device("cuda", local_rank)


def cleanup() -> None:
    """Leave the process group at a normal end: a barrier first, so no rank tears down its gloo
    connections while a peer is still finishing its last collective (measured: without it, rank 1
    sometimes aborted at exit, "terminate called without an active exception", on a loaded machine)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def session(config) -> Iterator[Dist]:
    """The process group for one training (a TrainConfig): joined at the start, left at a normal end.
    After a failure it is left alone: the process exits next, and a teardown could wait on a dead
    peer. A rank's own error is marked with its rank (cli.main prints it as `error: rank N: ...`);
    a collective broken by another rank's exit becomes a PeerFailure."""
    import torch.distributed as dist

    owned = not (dist.is_available() and dist.is_initialized())
    d = start(config.device, config.sync_bn, config.batch_size)
    try:
        yield d
    except MedClassifyError as e:
        if d.enabled and not isinstance(e, PeerFailure):
            e.rank = d.rank
        raise
    except BaseException as e:
        failure = peer_failure(e, d)
        if failure is not None:
            raise failure from None
        raise
    if d.enabled and owned:
        cleanup()


@contextlib.contextmanager
def node_first(d: Dist) -> Iterator[bool]:
    """Data preparation, once per node: local rank 0 runs the body first (decoding the image cache,
    fingerprinting for the audit) while the node's other ranks wait at a barrier, then they run it
    too and find every file built (their caches open read-only). Yields whether this rank builds."""
    if not d.enabled:
        yield True
        return
    if not d.is_local_main:
        d.barrier()
    yield d.is_local_main
    if d.is_local_main:
        d.barrier()


class FollowerWriter:
    """What a rank other than 0 holds in place of the RunWriter: the run folder's path (for the
    names of files that only rank 0 writes) and whether rank 0 is resuming; it writes nothing."""

    def __init__(self, out: str | Path, resuming: bool):
        final = Path(out)
        self.final, self.path = final, final.parent / f".{final.name}.partial"
        self.resuming = resuming
        self.training_started = False
        self.checkpointed_epoch = None

    def protect(self, inputs) -> None:
        pass

    def abort(self) -> bool:
        return False
