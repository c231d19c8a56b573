"""The fit loop: data preparation, model, optimiser and schedule, epochs with validation, and a
complete run directory at the end."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import math
import os
import platform
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..version import __version__
from ..config import TrainConfig
from ..data.prepare import PreparedData, prepare
from ..data.transforms import get_preset
from ..errors import ConfigError, RunError
from ..engine import Net, predict_rows
from ..io import read_json_object, write_csv, write_json
from ..models import create_model, get_spec
from ..reporting import Reporter
from ..runtime import autocast_context, choose_amp_dtype
from ..run import FORMAT_VERSION, RunWriter, load_run, read_split_csv, save_weights, write_split_csv
from .callbacks import BestCheckpoint, EarlyStopping, History, LastEpochsAverage, WeightAverage
from .batchnorm import batchnorm_layers, refresh_batchnorm, refresh_decision, refresh_rows
from .distributed import Dist, FollowerWriter, GlobalBatchLoss, node_first, session
from .checkpoint import (check_resumable, config_snapshot, load_checkpoint, load_optimizer_state, optimizer_state,
                         prefixed, restore_rng, rng_state, save_checkpoint, unprefixed)
from .freeze import freeze_stages, keep_frozen_eval, stage_modules
from .imbalance import class_weights, epoch_order
from .loader import BatchLoader
from .metrics import compute_metrics
from .schedule import lr_multiplier
from .tracking import Tracker, make_tracker
from ..ood import fit_guard
from .validation import choose_tta

DEFAULT_FREEZE = 2  # stem and first stages of a pretrained backbone: 1.4x faster steps (benchmarks/accuracy.py)
CALIBRATION_STEPS = 6  # steps timed (after 2 warm-up steps): the duration estimate, or the epochs of a time budget


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible.", "use --device cpu or auto.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_pretrained(config: TrainConfig) -> str:
    if config.pretrained != "auto":
        return config.pretrained
    if config.weights:
        return "none"
    return "imagenet" if get_spec(config.model).offline_pretrained else "none"


def resolve_lr(config: TrainConfig) -> float:
    if config.lr is not None:
        return config.lr
    # 1e-3 suits fine-tuning too once the new head starts small (models.registry.init_classifier)
    # and the first stages are frozen; SGD needs about 10x the step size of AdamW.
    return 1e-2 if config.optimizer == "sgd" else 1e-3


def check_input_size(model: nn.Module, size: int, channels: int, model_name: str) -> None:
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, channels, size, size))
    except RuntimeError as e:
        reason = str(e).splitlines()[0][:120]
        raise ConfigError(f"Model {model_name} cannot take {size}x{size} images ({reason}).",
                          "choose a larger --image-size (64 or more works for every built-in model).") from None


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = resolve_lr(config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    epochs_run: int
    val_metrics: dict
    train_seconds: float
    selection: str = ""  # which weights ship, in words: "last epoch 10", "average of epochs 8-10", "best epoch 3"


@dataclass
class RunState:
    """What one training run holds from step to step: the objects a checkpoint saves, and the loop's
    counters and clocks (`loop_state` is the checkpoint's "loop")."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]  # the schedule multiplies these
    scaler: torch.amp.GradScaler | None
    amp: torch.dtype | None
    class_weights: torch.Tensor | None
    loss_fn: nn.Module
    rng: np.random.Generator  # the epoch order
    gen: torch.Generator  # the augmentation
    history: History
    best: BestCheckpoint
    stopper: EarlyStopping
    average: LastEpochsAverage | None
    ema: WeightAverage | None
    steps_per_epoch: int
    warmup: int  # steps
    epochs: int  # planned; a time budget re-plans them
    total_steps: int
    cap_steps: int  # the configured epochs' steps
    ddp: nn.Module | None = None  # under torchrun: the model wrapped in DistributedDataParallel, which steps run through
    epoch_done: int = 0
    step: int = 0
    calibrated: bool = False  # the first steps are timed: a duration estimate, or the plan of a time budget
    finished: bool = False
    t_start: float = 0.0
    t_decay: float = 0.0  # when the decay began (the end of the warm-up)
    t_loop: float = 0.0  # when this session's epochs began, for the ETA
    done_at_loop: int = 0

    @property
    def shipped(self) -> nn.Module:
        return self.ema.module if self.ema else self.model

    def loop_state(self, planned_seconds: float) -> dict:
        return {"epoch": self.epoch_done, "step": self.step, "epochs": self.epochs, "total_steps": self.total_steps,
                "calibrated": self.calibrated, "finished": self.finished, "planned_seconds": planned_seconds,
                "elapsed_s": time.perf_counter() - self.t_start, "decay_offset_s": self.t_decay - self.t_start}


class Trainer:
    def __init__(self, config: TrainConfig, data: PreparedData, reporter: Reporter, dist: Dist | None = None):
        self.config, self.data, self.reporter = config, data, reporter
        self.dist = dist or Dist()
        self.device = self.dist.device if self.dist.enabled else resolve_device(config.device)
        self.rank_batch = self.dist.rank_batch(config.batch_size)  # --batch-size is the global batch
        self.classes = data.classes
        cls_index = {c: i for i, c in enumerate(self.classes)}
        train, val = data.split("train"), data.split("val")
        self.train_rows = data.cache.rows([r.path for r in train])
        self.train_labels = np.array([cls_index[r.label] for r in train], dtype=np.int64)
        self.val_rows = data.cache.rows([r.path for r in val])
        self.val_labels = np.array([cls_index[r.label] for r in val], dtype=np.int64)
        self.prep = data.preprocessing
        self.preset = get_preset(config.augment)
        self.loader = BatchLoader(data.cache.images, self.train_rows, self.train_labels, self.prep, self.preset,
                                  self.device, self.rank_batch)
        self.frozen: list[nn.Module] = []
        self.frozen_stages = 0
        self.planned_seconds = 0.0  # under a time budget: when the planned epochs should end, from t_start
        self.tracker: Tracker = Tracker()
        self.selection: dict = {}  # which weights ship (run.json "selection"), set at the end of run()
        self.history: History | None = None  # the run's, once run() has set it up

    def build_model(self) -> nn.Module:
        c = self.config
        model = create_model(c.model, len(self.classes), self.prep.channels, resolve_pretrained(c), c.weights, c.drop_rate)
        starts_pretrained = resolve_pretrained(c) != "none" or bool(c.weights)
        n = c.freeze
        if n is None:
            n = DEFAULT_FREEZE if starts_pretrained and len(stage_modules(model)) > DEFAULT_FREEZE else 0
        if n:
            if not starts_pretrained:
                raise ConfigError(f"--freeze {c.freeze} holds layers fixed, but {c.model} starts from random weights.",
                                  "use --freeze 0, or start from pretrained weights (--pretrained imagenet or --weights PATH).")
            self.frozen = freeze_stages(model, n, c.model)
        self.frozen_stages = n
        return model.to(self.device).to(memory_format=torch.channels_last)

    def run(self, writer: RunWriter) -> TrainResult:
        state = self._setup(writer.path)
        self.history = state.history
        self._describe(state)
        state.t_start = state.t_decay = time.perf_counter()
        self.planned_seconds = self.config.time_budget or 0.0  # until the first-steps calibration
        if writer.resuming:
            self._resume(writer.path, state)
        state.ddp = self.dist.wrap(state.model, self.config.sync_bn)
        state.t_loop, state.done_at_loop = time.perf_counter(), state.epoch_done  # the ETA counts this session's epochs
        writer.training_started = True
        last = state.epoch_done if state.finished else self.config.epochs  # the plan may end sooner (state.finished)
        for epoch in range(state.epoch_done + 1, last + 1):
            self.dist.reseed(state.gen, self.config.seed, epoch)
            t_epoch = time.perf_counter()
            train_stats = self.dist.merge_epoch_stats(self.train_one_epoch(state, epoch, t_epoch))
            train_stats["seconds"] = time.perf_counter() - t_epoch
            val = self.validate(state)
            self.end_of_epoch(state, writer.path, epoch, train_stats, val, t_epoch)
            if state.finished:
                break
        return self._finish(state, writer.path)

    def _setup(self, folder: Path) -> RunState:
        """Model, optimiser, loss and callbacks, made in the order that fixes what the seed produces."""
        c = self.config
        seed_everything(c.seed)
        model = self.build_model()
        amp = choose_amp_dtype(model, self.device, c.precision)
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        weights = class_weights(self.train_labels, len(self.classes), c.imbalance)
        weights_on = None if weights is None else weights.to(self.device)
        loss_fn = (GlobalBatchLoss(weights_on, c.label_smoothing, self.dist.world) if self.dist.enabled else
                   nn.CrossEntropyLoss(weight=weights_on, label_smoothing=c.label_smoothing))
        optimizer = build_optimizer(model, c)
        steps_per_epoch = max(1, math.ceil(self.dist.shard_len(len(self.train_rows)) / self.rank_batch))
        return RunState(
            model=model, optimizer=optimizer, base_lrs=[g["lr"] for g in optimizer.param_groups], scaler=scaler,
            amp=amp, class_weights=weights, loss_fn=loss_fn,
            rng=np.random.default_rng(c.seed), gen=torch.Generator().manual_seed(c.seed),
            history=History(folder / "history.csv"), best=BestCheckpoint(folder / "model.safetensors", c.monitor),
            stopper=EarlyStopping(c.early_stopping),
            average=LastEpochsAverage(c.average_epochs) if c.select == "average" else None,
            ema=WeightAverage(model, steps_per_epoch) if c.ema else None,
            steps_per_epoch=steps_per_epoch, warmup=int(c.warmup_epochs * steps_per_epoch),
            epochs=c.epochs, total_steps=c.epochs * steps_per_epoch,
            cap_steps=c.epochs * steps_per_epoch)  # with a time budget, the clock drives the decay (lr_multiplier)

    def _describe(self, state: RunState) -> None:
        c, amp, weights = self.config, state.amp, state.class_weights
        self.reporter.info(f"Training {c.model} ({resolve_pretrained(c)} weights) on {len(self.train_rows)} images, "
                           f"validating on {len(self.val_rows)}; {self.prep.channels} channel(s), "
                           f"{self.prep.image_size} px, precision {'fp32' if amp is None else str(amp).removeprefix('torch.')}, "
                           f"device {self.device}.")
        if self.dist.enabled:
            d = self.dist.describe(c.batch_size)
            self.reporter.info(f"Distributed: {d['world_size']} processes ({d['backend']}), {d['batch_per_process']} images "
                               f"each per step: a global batch of {d['global_batch']}.")
            if d["global_batch"] != c.batch_size:
                self.reporter.warn(f"--batch-size {c.batch_size} is not a multiple of the {d['world_size']} processes: "
                                   f"the global batch is {d['global_batch']}.")
        if c.imbalance != "none":
            self.reporter.info(f"Imbalance handling: {c.imbalance}" + (
                f" (class weights {', '.join(f'{w:.2f}' for w in weights.tolist())})" if weights is not None else ""))

    def _resume(self, folder: Path, state: RunState) -> None:
        loop = self._restore(folder, state)
        state.epoch_done, state.step, state.epochs, state.total_steps = (loop["epoch"], loop["step"], loop["epochs"],
                                                                         loop["total_steps"])
        state.calibrated, state.finished, self.planned_seconds = loop["calibrated"], loop["finished"], loop["planned_seconds"]
        state.t_start = time.perf_counter() - loop["elapsed_s"]  # a time budget continues the saved plan
        state.t_decay = state.t_start + loop["decay_offset_s"]
        self.reporter.info(f"Resuming after epoch {state.epoch_done} (of {state.epochs} planned) from the checkpoint "
                           f"in {folder}.")

    def train_one_epoch(self, state: RunState, epoch: int, t_epoch: float) -> dict:
        """One pass over the training images; returns the epoch's mean loss, accuracy and image count."""
        c = self.config
        state.model.train()
        keep_frozen_eval(self.frozen)
        order = self.dist.shard(epoch_order(self.train_labels, c.imbalance if c.imbalance == "sampler" else "none", state.rng))
        loss_sum = correct = seen = 0.0
        t_cal = None
        t_loop = time.perf_counter()
        # closing(): a failing step stops the loader thread now, as the error unwinds, not when the
        # traceback is freed: torchrun's SIGTERM could then land in the loader's cleanup, which Python
        # can only report as "Exception ignored in" with a traceback.
        with self.reporter.task(f"epoch {epoch}/{state.epochs}", state.steps_per_epoch,
                                fields="loss {task.fields[loss]:.4f}") as bar, \
                contextlib.closing(self.loader.epoch(order, state.gen)) as batches:
            for b, (x, y) in enumerate(batches):
                self._set_lr(state)
                loss, logits = self._step(state, x, y, epoch)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                bar.advance(1, loss=loss_sum / seen)
                if not state.calibrated and b == 1:
                    t_cal = time.perf_counter()
                if not state.calibrated and t_cal and b == 1 + CALIBRATION_STEPS:
                    self._calibrate(state, t_cal, t_epoch)
        # The share of the step loop spent blocked on the next batch: near 0 when the loader keeps up.
        wait_share = self.loader.wait_s / max(time.perf_counter() - t_loop, 1e-9)
        return {"loss": loss_sum / seen, "accuracy": correct / seen, "images": seen, "data_wait_share": wait_share}

    def _set_lr(self, state: RunState) -> None:
        c = self.config
        if state.step == state.warmup:
            state.t_decay = time.perf_counter()
        time_progress = None
        if c.time_budget and state.step >= state.warmup:
            spent = time.perf_counter() - state.t_decay
            time_progress = spent / max(1e-9, self.planned_seconds - (state.t_decay - state.t_start))
        if c.time_budget and self.dist.enabled:  # rank 0's clock: every rank must step with the same rate
            time_progress = self.dist.broadcast_float(-1.0 if time_progress is None else time_progress)
            time_progress = None if time_progress < 0 else time_progress
        mult = lr_multiplier(state.step, state.cap_steps if c.time_budget else state.total_steps, state.warmup,
                             c.scheduler, time_progress=time_progress)
        for g, base in zip(state.optimizer.param_groups, state.base_lrs):
            g["lr"] = base * mult

    def _step(self, state: RunState, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        model, optimizer, scaler = state.model, state.optimizer, state.scaler
        with autocast_context(self.device, state.amp):
            logits = (state.ddp or model)(x)
            loss = state.loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if state.ema:
            state.ema.update(model)
        if self.dist.is_main and not torch.isfinite(loss):  # other ranks follow through the next collective
            raise ConfigError(f"Training diverged (loss {loss.item()}) at epoch {epoch}.",
                              "lower --lr (e.g. by 10x) or use --precision fp32.")
        state.step += 1
        return loss, logits

    def _calibrate(self, state: RunState, t_cal: float, t_epoch: float) -> None:
        """The first steps are timed: the plan of a time budget, or else a duration estimate."""
        c = self.config
        if c.time_budget:
            state.epochs, state.total_steps = self._fit_budget(t_cal, CALIBRATION_STEPS * c.batch_size,
                                                               t_epoch - state.t_start, state.steps_per_epoch, state.epochs)
        else:
            self._estimate(t_cal, CALIBRATION_STEPS * c.batch_size, state.epochs - state.epoch_done)
        if c.time_budget and self.dist.enabled:  # rank 0's timing plans every rank's epochs
            state.epochs, state.total_steps, self.planned_seconds = self.dist.broadcast(
                (state.epochs, state.total_steps, self.planned_seconds))
        state.calibrated = True

    def validate(self, state: RunState) -> dict:
        if self.dist.enabled:
            val_probs, val_logits = self._validate_sharded(state)
        else:
            val_probs, val_logits = predict_rows(Net(state.shipped, device=self.device, amp_dtype=state.amp),
                                                 self.data.cache.reader(), self.val_rows, self.prep)
        val = compute_metrics(self.val_labels, val_probs, self.classes)
        val["loss"] = float(nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(self.val_labels)))
        return val

    def _validate_sharded(self, state: RunState) -> tuple[np.ndarray, np.ndarray]:
        """Each rank predicts every world-th validation image with rank 0's weights and batch-norm
        statistics; the gathered predictions are one process's, and so are the metrics."""
        self.dist.sync_buffers(state.model, *([state.ema.module] if state.ema else []))
        mine = np.arange(self.dist.rank, len(self.val_rows), self.dist.world)
        probs, logits = predict_rows(Net(state.shipped, device=self.device, amp_dtype=state.amp),
                                     self.data.cache.reader(), self.val_rows[mine], self.prep)
        return self.dist.gather_predictions(len(self.val_rows), mine, probs, logits)

    def end_of_epoch(self, state: RunState, folder: Path, epoch: int, train: dict, val: dict, t_epoch: float) -> None:
        """History, selection, early stopping or a budget's re-plan, then the epoch's checkpoint."""
        shipped = state.shipped
        improved = state.best.update(shipped, epoch, val)
        if state.average:
            state.average.collect(shipped, epoch, state.epochs)
        state.epoch_done = epoch
        self._log_epoch(state, epoch, train, val, t_epoch, improved)
        self._plan_next(state, epoch, improved)
        if self.dist.is_main:  # rank 0 alone writes the run
            self._checkpoint(folder, state.loop_state(self.planned_seconds), state)  # the commit point of this epoch
            state.history.write()
            if improved and self.config.select == "best":
                state.best.save(shipped)
        self.tracker.log_epoch(epoch, state.history.rows[-1])

    def _log_epoch(self, state: RunState, epoch: int, train: dict, val: dict, t_epoch: float, improved: bool) -> None:
        per_s = train["images"] / train["seconds"]
        state.history.append({"epoch": epoch, "lr": state.optimizer.param_groups[0]["lr"], "train_loss": train["loss"],
                              "train_accuracy": train["accuracy"], "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                              "val_balanced_accuracy": val["balanced_accuracy"], "val_macro_f1": val["macro_f1"],
                              "val_auc": val["auc"], "seconds": time.perf_counter() - t_epoch,
                              "train_images_per_s": per_s, "data_wait_share": train["data_wait_share"]})
        auc = f"{val['auc']:.4f}" if val["auc"] is not None else "n/a"
        eta = eta_text(state.t_loop, epoch - state.done_at_loop, state.epochs - epoch)
        self.reporter.info(f"epoch {epoch}/{state.epochs}: loss {train['loss']:.4f}, val loss {val['loss']:.4f}, "
                           f"val acc {val['accuracy']:.4f}, bal acc {val['balanced_accuracy']:.4f}, AUC {auc}, "
                           f"{per_s:.1f} img/s, data wait {train['data_wait_share']:.0%}{' *' if improved else ''}{eta}")

    def _plan_next(self, state: RunState, epoch: int, improved: bool) -> None:
        c = self.config
        state.finished = state.stopper.step(improved)
        if state.finished:
            self.reporter.info(f"Early stopping: no improvement of val {c.monitor} for {c.early_stopping} epochs.")
        elif c.time_budget:
            state.epochs, state.total_steps = self._replan(state.t_start, epoch, state.epochs, state.steps_per_epoch)
        state.finished = state.finished or epoch >= state.epochs
        if self.dist.enabled:  # rank 0's plan (a time budget's clocks differ by rank) on every rank
            state.finished, state.epochs, state.total_steps, self.planned_seconds, best, state.stopper.bad_epochs = \
                self.dist.broadcast((state.finished, state.epochs, state.total_steps, self.planned_seconds,
                                     state.best.state(), state.stopper.bad_epochs))
            state.best.load_state(best)

    def _finish(self, state: RunState, folder: Path) -> TrainResult:
        """The last weights, and the selected ones as model.safetensors (the best epoch's are already there)."""
        c, average, done = self.config, state.average, state.epoch_done
        shipped = state.shipped
        if self.dist.is_main:
            save_weights(shipped, folder / "last.safetensors")
        # An average that collected nothing (a budget or early stop ended the plan first) ships the last epoch.
        kept, selection, epochs_kept = done, f"last epoch {done}", [done]
        if c.select == "best":
            best_epoch = state.best.best_epoch
            kept, selection, epochs_kept = best_epoch, f"best epoch {best_epoch} (val {c.monitor})", [best_epoch]
        elif average and average.epochs:
            selection, epochs_kept = f"average of epochs {average.epochs[0]}-{average.epochs[-1]}", average.epochs
        refreshed: dict = {}
        if c.select != "best" and self.dist.is_main:
            final = average.apply(shipped) if average else shipped
            if average and average.epochs and c.bn_refresh_images:
                final, refreshed = self._refresh_batchnorm(final)
            # One metadata key: safetensors writes several in a random order, and the file must be byte-identical.
            save_weights(final, folder / "model.safetensors", metadata={"epoch": str(kept)})
        self.selection = {"select": c.select, "epoch": kept, "epochs": epochs_kept}
        if refreshed:
            self.selection["bn_refresh"] = refreshed
        return TrainResult(folder, kept, done, {}, time.perf_counter() - state.t_start, selection)

    def _refresh_batchnorm(self, model: nn.Module) -> tuple[nn.Module, dict]:
        """The averaged weights with their own BatchNorm statistics, from unaugmented training images
        (training/batchnorm.py), when that raises validation balanced accuracy; else `model` as it is."""
        paths = refresh_rows([r.path for r in self.data.split("train")], self.config.bn_refresh_images)
        if not batchnorm_layers(model) or len(paths) < 2:
            return model, {}
        reader = self.data.cache.reader()
        refreshed = copy.deepcopy(model)
        refresh_batchnorm(refreshed, reader[self.data.cache.rows(paths)], self.prep)
        decision = refresh_decision(model, refreshed, reader, self.val_rows, self.val_labels, self.prep, self.classes)
        scores = decision.get("val_balanced_accuracy")
        self.reporter.info(f"BatchNorm statistics re-estimated on {len(paths)} training images: "
                           + (f"validation balanced accuracy {scores['averaged']:.3f} averaged, {scores['refreshed']:.3f} "
                              f"refreshed; {'refreshed' if decision['kept'] else 'averaged'} statistics kept."
                              if scores else f"not kept ({decision['reason']})."))
        return (refreshed if decision["kept"] else model), {"images": len(paths), **decision}

    def _checkpoint(self, folder: Path, loop: dict, state: RunState) -> None:
        ema, average, scaler = state.ema, state.average, state.scaler
        opt_tensors, opt_meta = optimizer_state(state.optimizer)
        rng_tensors, rng_meta = rng_state(state.rng, state.gen, self.device)
        tensors = {**prefixed("model", state.model.state_dict()), **opt_tensors, **rng_tensors}
        if ema:
            tensors.update(prefixed("ema", ema.module.state_dict()))
        if average:
            tensors.update(average.tensors())
        meta = {"config": config_snapshot(self.config.model_dump()), "loop": loop, "optimizer": opt_meta, "rng": rng_meta,
                "best": state.best.state(), "early_stopping": {"bad_epochs": state.stopper.bad_epochs},
                "ema_steps": ema.steps if ema else None, "scaler": scaler.state_dict() if scaler else None,
                "history": state.history.rows, "average": average.state() if average else None}
        save_checkpoint(folder, loop["epoch"], tensors, meta)

    def _restore(self, folder: Path, state: RunState) -> dict:
        tensors, meta = self.dist.broadcast(load_checkpoint(folder) if self.dist.is_main else None)
        ema, average = state.ema, state.average
        state.model.load_state_dict(unprefixed("model", tensors))
        load_optimizer_state(state.optimizer, tensors, meta["optimizer"])
        if ema:
            ema.module.load_state_dict(unprefixed("ema", tensors))
            ema.steps = meta["ema_steps"]
        if state.scaler and meta["scaler"]:
            state.scaler.load_state_dict(meta["scaler"])
        restore_rng(tensors, meta["rng"], state.rng, state.gen, self.device)
        state.best.load_state(meta["best"])
        state.stopper.bad_epochs = meta["early_stopping"]["bad_epochs"]
        state.history.rows = meta["history"]
        if average:
            average.load(tensors, meta.get("average") or {"epochs": []})
        # Writes that follow a checkpoint's commit, redone in case the kill came between them.
        if self.dist.is_main:
            state.history.write()
            if state.best.best_epoch == meta["epoch"] and self.config.select == "best":
                state.best.save(state.shipped)
        return meta["loop"]

    def _fit_budget(self, t_cal: float, images_timed: int, setup_s: float, steps_per_epoch: int, max_epochs: int):
        c = self.config
        per_img = (time.perf_counter() - t_cal) / images_timed
        epoch_s = per_img * len(self.train_rows) + per_img * 0.35 * len(self.val_rows)
        epochs = int(max(1, min(max_epochs, (c.time_budget - setup_s) // epoch_s)))
        self.planned_seconds = setup_s + epochs * epoch_s
        self.reporter.info(f"Time budget {c.time_budget / 60:.1f} min: {1 / per_img:.1f} img/s, about {epoch_s:.0f} s "
                           f"per epoch -> {epochs} epoch(s).")
        return epochs, epochs * steps_per_epoch

    def _estimate(self, t_cal: float, images_timed: int, epochs_left: int) -> None:
        """Informational only: the plan is fixed, whatever this says."""
        per_img = (time.perf_counter() - t_cal) / images_timed
        epoch_s = per_img * len(self.train_rows) + per_img * 0.35 * len(self.val_rows)
        self.reporter.info(f"Plan: {epochs_left} epoch(s) of {len(self.train_rows)} images; at {1 / per_img:.1f} img/s "
                           f"that is about {duration_text(epochs_left * epoch_s)} on this machine.")

    def _replan(self, t_start: float, done: int, planned: int, steps_per_epoch: int) -> tuple[int, int]:
        """After each epoch, size the rest of the run from whole measured epochs (training and
        validation), which is steadier than the first steps' timing when the machine's load changes.
        The decay follows the clock towards the planned end: the last epoch that fits the budget, so
        a run that cannot use the budget's tail still ends at the floor learning rate."""
        c = self.config
        elapsed = time.perf_counter() - t_start
        epochs = epochs_within_budget(elapsed, done, c.time_budget, c.epochs)
        self.planned_seconds = epochs * elapsed / done
        if epochs <= done:
            self.reporter.info(f"Time budget: stopping after epoch {done} ({elapsed:.0f} s of {c.time_budget:.0f} s).")
        elif epochs != planned:
            self.reporter.info(f"Time budget: {elapsed / done:.0f} s per epoch measured -> {epochs} epoch(s) in all.")
        return epochs, epochs * steps_per_epoch


def duration_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def eta_text(t_loop: float, epochs_timed: int, epochs_left: int) -> str:
    """', about 12 min left (ETA 14:05)' from the mean epoch time of this session's epochs."""
    if epochs_timed <= 0 or epochs_left <= 0:
        return ""
    left = (time.perf_counter() - t_loop) / epochs_timed * epochs_left
    at = (dt.datetime.now() + dt.timedelta(seconds=left)).strftime("%H:%M")
    return f"; about {duration_text(left)} left (ETA {at})"


def epochs_within_budget(elapsed: float, done: int, budget: float, max_epochs: int) -> int:
    """Total epochs such that the run, at the mean epoch time so far, ends within the budget."""
    per_epoch = elapsed / done
    return max(done, min(max_epochs, done + int(max(0.0, budget - elapsed) // per_epoch)))


def train(config: TrainConfig | None = None, reporter: Reporter | None = None, overwrite: bool = False,
          resume: bool = False, **kwargs) -> TrainResult:
    """Train a model and write a complete run directory. Accepts a TrainConfig or keyword arguments
    (data=..., out=..., model=..., ...). Every completed epoch is checkpointed in the hidden partial
    run folder; `resume=True` continues an interrupted training of the same settings from there."""
    config = config or TrainConfig(**kwargs)
    reporter = reporter or Reporter()
    with session(config) as dist:  # under torchrun: the process group; else nothing
        return _train_process(config, reporter if dist.is_main else Reporter(quiet=True), overwrite, resume, dist)


def _train_process(config: TrainConfig, reporter: Reporter, overwrite: bool, resume: bool, dist: Dist) -> TrainResult:
    """One process's share of train(): all of it without torchrun; under torchrun rank 0 also writes
    the run, tracks and prints, and the other ranks follow its decisions."""
    # A missing mlflow is reported before any work; under torchrun rank 0 alone tracks (and checks).
    tracker = make_tracker(config, reporter) if dist.is_main else Tracker()
    if config.threads:
        torch.set_num_threads(config.threads)
    spec = get_spec(config.model)
    if dist.is_main:
        writer = RunWriter(config.out, overwrite=overwrite, resume=resume,
                           protected=[p for p in (config.data, config.weights) if p])
        dist.broadcast(writer.resuming)
    else:
        writer = FollowerWriter(config.out, resuming=dist.broadcast(None))
    if resume and not writer.resuming:
        reporter.info(f"Nothing to resume for {config.out}: training from the start.")
    try:
        with sigterm_as_exit():
            return _train_into(writer, config, spec, reporter, tracker, dist)
    except BaseException as e:
        interrupt = isinstance(e, (KeyboardInterrupt, SystemExit))
        tracker.finish("KILLED" if interrupt else "FAILED", error=None if interrupt else str(e) or type(e).__name__)
        if writer.abort() and (interrupt or writer.training_started):
            what = "Interrupted" if interrupt else "Stopped"
            reporter.warn(f"{what} after epoch {writer.checkpointed_epoch}: its checkpoint is kept in {writer.path}; "
                          "run the same command with --resume to continue, or with --overwrite to start again.")
        raise


@contextlib.contextmanager
def sigterm_as_exit():
    """A `kill` (SIGTERM) unwinds like Ctrl-C would: the last epoch's checkpoint is kept, resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def _raise(signum, frame):
        if os.getpid() != owner:  # a forked worker: die as SIGTERM intends
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_into(writer: RunWriter, config: TrainConfig, spec, reporter: Reporter, tracker: Tracker,
                dist: Dist | None = None) -> TrainResult:
    dist = dist or Dist()
    saved_tracking = _check_resumable(writer, config) if dist.is_main else None
    tracking = tracker.start(config, writer.path, resume=saved_tracking)  # a bad tracking URI fails before the work
    with node_first(dist):  # each node's local rank 0 decodes the cache; the node's other ranks then open it
        data, prep_s = _prepare_data(config, spec, reporter)
    writer.protect(r.path for r in data.records)
    trainer = Trainer(config, data, reporter, dist)
    trainer.tracker = tracker
    if dist.is_main:
        check_input_size(trainer.build_model().cpu(), config.image_size, data.preprocessing.channels, config.model)
        info = run_info(config, data, trainer)
        if tracking:
            info["tracking"] = tracking  # the later verbs log into the same MLflow run
            if not saved_tracking:
                tracker.log_params(tracked_params(info))
        _write_run_start(writer, config, data, info)
    result = trainer.run(writer)
    if not dist.is_main:
        return dist.broadcast(None)  # rank 0's result, once its run is committed
    return dist.broadcast(_finish_run(writer, config, reporter, tracker, tracking, trainer, result, prep_s))


def _check_resumable(writer: RunWriter, config: TrainConfig) -> dict | None:
    """Before the long preparation: a resumed run's checkpoint must match the settings; returns its
    saved MLflow run, to log into again."""
    if not writer.resuming:
        return None
    check_resumable(writer.path, config_snapshot(config.model_dump()))
    return read_json_object(writer.path / "run.json", "run description",
                            "start the training again with --overwrite.").get("tracking")


def _prepare_data(config: TrainConfig, spec, reporter: Reporter) -> tuple[PreparedData, float]:
    t0 = time.perf_counter()
    data = prepare(config.data, image_size=config.image_size, resize=config.resize, channels=config.channels,
                   normalize=config.normalize, mean=spec.mean, std=spec.std, patient_pattern=config.patient_pattern,
                   val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
                   reporter=reporter, workers=config.workers, dedupe=config.dedupe, strict=config.strict,
                   splits=config.splits)
    return data, time.perf_counter() - t0


def run_info(config: TrainConfig, data: PreparedData, trainer: Trainer) -> dict:
    """run.json as training starts: the settings as given and as resolved, the data and the machine."""
    return {
        "format_version": FORMAT_VERSION,
        "medclassify_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.model_dump(),
        "pretrained": resolve_pretrained(config),
        "lr": resolve_lr(config),
        "frozen_stages": trainer.frozen_stages,
        "classes": data.classes,
        "preprocessing": data.preprocessing.model_dump(),
        "data": data.summary(),
        "audit": data.audit,
        "environment": environment(trainer.device),
        **({"distributed": trainer.dist.describe(config.batch_size)} if trainer.dist.enabled else {}),
        "data_fingerprint": data_fingerprint(data),
        "interrupted": True,  # until the run is committed: a partial folder left behind is marked so
    }


def _write_run_start(writer: RunWriter, config: TrainConfig, data: PreparedData, info: dict) -> None:
    """split.csv, skipped.csv, run.json and config.yaml; a resumed run keeps its split and its creation time."""
    if writer.resuming:
        check_same_split(writer.path / "split.csv", data.records)
        saved = read_json_object(writer.path / "run.json", "run description", "start the training again with --overwrite.")
        info["created"] = saved.get("created", info["created"])
        info["resumed"] = saved.get("resumed", []) + [{"after_epoch": writer.checkpointed_epoch,
                                                       "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}]
    else:
        write_split_csv(writer.path / "split.csv", data.records)
    if data.skipped:
        write_csv(writer.path / "skipped.csv", ["path", "reason"], data.skipped.items())
    write_json(writer.path / "run.json", info)
    write_config_yaml(writer.path / "config.yaml", config)


def _finish_run(writer: RunWriter, config: TrainConfig, reporter: Reporter, tracker: Tracker, tracking: dict | None,
                trainer: Trainer, result: TrainResult, prep_s: float) -> TrainResult:
    """Completes run.json, chooses test-time augmentation on validation, logs to MLflow and commits the folder."""
    data = trainer.data
    run = load_run(writer.path)
    run.update(
        interrupted=None,
        best_epoch=result.best_epoch,
        selection=trainer.selection,
        epochs_run=result.epochs_run,
        timings={"prepare_s": round(prep_s, 1), "cache_hit": data.cache.hit,
                 "cache_build_s": round(data.cache.build_seconds, 1), "train_s": round(result.train_seconds, 1),
                 "data_wait_share": [round(r["data_wait_share"], 4) for r in trainer.history.rows
                                     if r.get("data_wait_share") is not None]},
        warnings=[m for lvl, m in reporter.messages if lvl == "warning"],
    )
    # Decided here, once, on validation, so every later use of the run (evaluate, predict, serve) agrees;
    # the validation metrics of the chosen variant are saved as metrics/val.json.
    choose_tta(run, reporter, cache=data.cache)
    fit_guard(run, reporter, cache=data.cache, quantile=config.ood_quantile, seed=config.seed)
    result.val_metrics = run.metrics("val")
    if tracking:
        registered = tracker.register(config.register_model) if config.register_model else None
        if registered:
            run.update(tracking={**run.info["tracking"], "registered": registered})
        if result.val_metrics:
            tracker.log_test(result.val_metrics)
        tracker.log_artifacts(writer.path)
    result.run_dir = writer.commit()
    tracker.finish("FINISHED")
    return result


def tracked_params(info: dict) -> dict:
    """The resolved settings as MLflow params: the config as given, and what "auto" and defaults became."""
    return {**info["config"], "resolved_pretrained": info["pretrained"], "resolved_lr": info["lr"],
            "frozen_stages": info["frozen_stages"], "classes": ",".join(info["classes"]),
            "resolved_channels": info["preprocessing"].get("channels"), "medclassify_version": info["medclassify_version"],
            "torch_version": info["environment"]["torch"]}


def environment(device: torch.device) -> dict:
    """What the same-seed, same-data promise depends on: the versions of the numeric stack and the device."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "medclassify": __version__}
    for name in ("torch", "torchvision", "timm", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    out.update({"device": str(device), "device_name": name, "threads": torch.get_num_threads()})
    return out


def data_fingerprint(data: PreparedData) -> str:
    """The cache's key of the image files (paths, sizes, modification times) and of their split."""
    from ..data.cache import files_key

    return files_key(sorted(r.path for r in data.records),
                     "data|" + "|".join(f"{r.label}:{r.split}" for r in sorted(data.records, key=lambda r: r.path)))


def write_config_yaml(path: Path, config: TrainConfig) -> None:
    """The resolved settings, readable back with `medclassify train --config config.yaml`."""
    import yaml

    from ..io import write_text

    settings = config.model_dump()
    if settings["time_budget"]:  # a duration needs its unit to be read back
        settings["time_budget"] = f"{settings['time_budget']:g}s"
    write_text(path, "# medclassify " + __version__ + ": the resolved training settings of this run\n"
               + yaml.safe_dump(settings, sort_keys=False))


def check_same_split(path: Path, records) -> None:
    """A resumed training must see the data the checkpoint was trained on: the preparation is
    deterministic given the seed, so any difference means the dataset changed."""
    fix = "restore the dataset as it was, or start the training again with --overwrite."
    try:
        saved = read_split_csv(path)
    except (OSError, KeyError, ValueError) as e:
        raise RunError(f"Cannot resume: {path} is unreadable ({type(e).__name__}).", fix) from None
    now = [(r.path, r.label, r.split, r.patient) for r in records]
    before = [(r.path, r.label, r.split, r.patient) for r in saved]
    if now != before:
        first = next((a for a, b in zip(now, before) if a != b), None) or (now[len(before):] or before[len(now):])[0]
        raise RunError(f"Cannot resume: the dataset changed since the interrupted training ({len(before)} images in its "
                       f"{path}, {len(now)} now; first difference: {first[0]}).", fix)
