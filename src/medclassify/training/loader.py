"""Training batches prepared ahead of the step: a background thread reads each batch's rows of the
memmap cache (index -> uint8 batch -> tensor) while the model steps on the previous one.

CPU: the thread also augments and normalises, consuming the augmentation generator batch after
batch exactly as an inline loop would, so the same seed gives the same weights with or without it.
CUDA: the thread pins the uint8 batch and copies it to the device on a side stream (non-blocking);
augmentation and normalisation then run on the GPU, their random draws from a device generator
seeded once per epoch from the augmentation generator (so a resumed run draws the same)."""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from typing import Iterator

import numpy as np
import torch

from ..data.cache import PagedRows
from ..data.preprocessing import Preprocessing
from ..data.transforms import AugmentPreset, augment

PREFETCH = 3  # batches ready ahead of the step; one thread keeps the augmentation stream in batch order
_POLL_S = 0.1


class BatchLoader:
    """`epoch(order, gen)` yields (x, y) on the device for consecutive `batch_size` slices of
    `order` (indices into `rows` / `labels`; a rank's shard under DDP). Within a batch the rows are
    read in file order (sequential reads), and x and y follow that order."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, prep: Preprocessing,
                 preset: AugmentPreset, device: torch.device, batch_size: int, depth: int = PREFETCH):
        self.images = images if isinstance(images, PagedRows) else PagedRows(images)
        self.rows, self.labels, self.prep, self.preset = rows, labels, prep, preset
        self.device, self.batch_size, self.depth = device, batch_size, depth
        self.cuda = device.type == "cuda"
        self.wait_s = 0.0  # of the last epoch: time the step loop was blocked waiting for a batch

    def steps(self, n: int) -> int:
        return max(1, math.ceil(n / self.batch_size))

    def epoch(self, order: np.ndarray, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.wait_s = 0.0
        slices = [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(self.steps(len(order)))]
        device_gen = None
        if self.cuda:  # drawn here, in the main thread, before any batch: the CPU stream stays in step
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            device_gen = torch.Generator(self.device).manual_seed(seed)
        q: queue.Queue = queue.Queue(self.depth)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(slices, gen, q, stop, torch.get_num_threads()),
                                  name="medclassify-loader", daemon=True)
        worker.start()
        try:
            for _ in slices:
                t0 = time.perf_counter()
                item = q.get()
                self.wait_s += time.perf_counter() - t0
                if isinstance(item, BaseException):
                    raise item
                yield self._on_device(item, device_gen) if self.cuda else item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a put, then let the thread see `stop`
                with contextlib.suppress(queue.Empty):
                    q.get_nowait()
                worker.join(_POLL_S)

    def _produce(self, slices, gen, q: queue.Queue, stop: threading.Event, threads: int) -> None:
        torch.set_num_threads(threads)  # a new thread's OpenMP default need not be the main thread's setting
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        try:
            for idx in slices:
                item = self._read(idx)
                item = self._to_device(item, stream) if self.cuda else self._cpu_batch(item, gen)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # handed to the step loop, which raises it
            with contextlib.suppress(queue.Full):
                q.put(e, timeout=_POLL_S * 10)

    def _read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows[idx]
        sort = np.argsort(rows)
        return self.images[rows[sort]], self.labels[idx][sort]

    def _cpu_batch(self, item, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = item
        x = self.prep.normalise(augment(self.prep.to_tensor(pixels), self.preset, gen))
        return x, torch.from_numpy(labels)

    def _to_device(self, item, stream):
        pixels, labels = item
        x = torch.from_numpy(np.ascontiguousarray(pixels)).pin_memory()
        y = torch.from_numpy(labels).pin_memory()
        with torch.cuda.stream(stream):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        return x, y, ready

    def _on_device(self, item, device_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, ready = item
        current = torch.cuda.current_stream(self.device)
        current.wait_event(ready)
        x.record_stream(current)  # allocated on the side stream, used and freed on this one
        y.record_stream(current)
        x = self.prep.normalise(augment(self.prep.to_tensor(x), self.preset, device_gen))
        return x, y

