import csv
import json
import threading

import numpy as np
import pytest
import torch

from medclassify.data.cache import PagedRows, release_pages
from medclassify.data.preprocessing import Preprocessing
from medclassify.data.transforms import augment, get_preset
from medclassify.training.loader import BatchLoader

PREP = Preprocessing(image_size=16, channels=1, mean=[0.5], std=[0.25])


def _data(tmp_path, n=37):
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 16, 16, 1))
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    rows = rng.permutation(n)[: n - 5]  # the training rows are a subset of the cache, in any order
    labels = rng.integers(0, 3, len(rows))
    return np.load(tmp_path / "images.npy", mmap_mode="r"), rows, labels


def _loader(images, rows, labels, batch=8):
    return BatchLoader(images, rows, labels, PREP, get_preset("robust"), torch.device("cpu"), batch)


def test_prefetched_batches_equal_the_inline_loop_and_leave_the_generator_where_it_would(tmp_path):
    images, rows, labels = _data(tmp_path)
    order = np.random.default_rng(1).permutation(len(rows))
    preset, gen_a, gen_b = get_preset("robust"), torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = list(_loader(images, rows, labels).epoch(order, gen_a))
    assert len(got) == 4 and [len(y) for _, y in got] == [8, 8, 8, 8]
    for b, (x, y) in enumerate(got):  # what the fit loop did before the loader, step by step
        idx = order[b * 8 : (b + 1) * 8]
        sort = np.argsort(rows[idx])
        want = PREP.normalise(augment(PREP.to_tensor(images[rows[idx][sort]]), preset, gen_b))
        assert torch.equal(x, want) and np.array_equal(y.numpy(), labels[idx][sort])
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_a_failure_while_reading_reaches_the_step_loop(tmp_path):
    images, rows, labels = _data(tmp_path)

    class Broken:
        shape, dtype = images.shape, images.dtype

        def __getitem__(self, idx):
            raise OSError("disk gone")

    loader = BatchLoader(PagedRows(Broken()), rows, labels, PREP, get_preset("none"), torch.device("cpu"), 8)
    with pytest.raises(OSError, match="disk gone"):
        list(loader.epoch(np.arange(len(rows)), torch.Generator()))


def test_leaving_an_epoch_early_stops_the_thread(tmp_path):
    images, rows, labels = _data(tmp_path)
    before = threading.active_count()
    batches = _loader(images, rows, labels, batch=2).epoch(np.arange(len(rows)), torch.Generator().manual_seed(0))
    next(batches)
    batches.close()
    assert threading.active_count() == before


def test_released_pages_keep_the_data_written_and_read(tmp_path):
    arr = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.uint8, shape=(64, 1024))
    arr[:] = np.arange(64, dtype=np.uint8)[:, None]
    release_pages(arr)  # dirty pages of the shared mapping: the page cache keeps them
    assert arr[63, 0] == 63
    del arr
    reread = np.load(tmp_path / "a.npy", mmap_mode="r")
    rows = PagedRows(reread)
    for _ in range(3):
        release_pages(reread)
        assert np.array_equal(rows[np.array([3, 40])][:, 0], [3, 40])


def test_the_data_wait_share_is_recorded_per_epoch(tiny_run):
    with open(tiny_run / "history.csv") as f:
        shares = [float(r["data_wait_share"]) for r in csv.DictReader(f)]
    timings = json.loads((tiny_run / "run.json").read_text())["timings"]
    assert len(shares) == 3 and all(0 <= s <= 1 for s in shares)
    assert timings["data_wait_share"] == [round(s, 4) for s in shares]


def test_row_reads_without_mapping_equal_the_memmap(tmp_path):
    arr = np.lib.format.open_memmap(tmp_path / "c.npy", mode="w+", dtype=np.float32, shape=(300, 7, 4))
    arr[:] = np.random.default_rng(0).random(arr.shape)
    arr.flush()
    mm = np.load(tmp_path / "c.npy", mmap_mode="r")
    rows = PagedRows(mm)
    idx = np.r_[np.arange(5), [299, -1, 17, 16, 40]]  # runs, the last row, a negative index, any order
    assert np.array_equal(rows[idx], mm[idx]) and np.array_equal(rows[idx, 3], mm[idx, 3])
    assert rows[np.zeros(0, np.int64)].shape == (0, 7, 4)
    with pytest.raises(IndexError):
        rows[np.array([300])]
