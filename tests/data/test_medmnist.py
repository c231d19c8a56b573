"""MedMNIST .npz files as published: scanned, decoded through virtual paths, trained end to end."""

import numpy as np
import pytest

from medclassify.data.images import decode
from medclassify.data.sources import scan_folder
from medclassify.data.synthetic import synthetic_image
from medclassify.errors import DataError


def write_npz(path, size=28, rgb=False, counts=(("train", 30), ("val", 8), ("test", 8)), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in counts:
        y = np.arange(n) % classes
        imgs = np.stack([synthetic_image(rng, size, int(k)) for k in y])
        if rgb:
            imgs = np.repeat(imgs[..., None], 3, axis=3)
        arrays[f"{split}_images"] = imgs
        arrays[f"{split}_labels"] = y[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path, arrays


@pytest.mark.parametrize("size, rgb", [(28, False), (64, True)])
def test_scan_and_decode(tmp_path, size, rgb):
    path, arrays = write_npz(tmp_path / "bloodmnist.npz", size=size, rgb=rgb)
    index = scan_folder(path)
    assert index.layout == "npz" and index.classes == ["0", "1", "2"]
    assert {s: sum(c.values()) for s, c in index.counts().items()} == {"train": 30, "val": 8, "test": 8}
    rec = [r for r in index.records if r.split == "val"][5]
    assert rec.label == str(int(arrays["val_labels"][5, 0]))
    assert np.array_equal(decode(rec.path), arrays["val_images"][5])


def test_labels_sort_numerically(tmp_path):
    path, _ = write_npz(tmp_path / "many.npz", counts=(("train", 24),), classes=12)
    assert scan_folder(path).classes[:3] == ["00", "01", "02"]


def test_not_medmnist(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="not a MedMNIST"):
        scan_folder(tmp_path / "x.npz")


def test_multilabel_refused(tmp_path):
    np.savez(tmp_path / "chest.npz", train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros((4, 14), np.uint8))
    with pytest.raises(DataError, match="multi-label"):
        scan_folder(tmp_path / "chest.npz")


def test_train_and_evaluate_from_npz(tmp_path, quiet):
    from medclassify.config import TrainConfig
    from medclassify.evaluation.evaluate import evaluate
    from medclassify.training.fit import train

    path, _ = write_npz(tmp_path / "mini.npz")
    cfg = TrainConfig(data=str(path), out=str(tmp_path / "run"), model="seed_cnn", image_size=32, epochs=1,
                      time_budget=None, batch_size=16, workers=1)
    result = train(cfg, reporter=quiet)
    metrics = evaluate(result.run_dir, reporter=quiet)
    assert metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1
