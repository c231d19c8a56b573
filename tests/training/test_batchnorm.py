"""The recipe's BatchNorm refresh after weight averaging (training/batchnorm.py)."""

import json

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from medclassify.config import TrainConfig
from medclassify.data.preprocessing import Preprocessing
from medclassify.training.batchnorm import refresh_batchnorm, refresh_rows
from medclassify.training.fit import train


def test_refresh_rows_are_evenly_spaced_through_the_sorted_paths():
    paths = [f"b/{i:02d}.png" for i in range(10)] + [f"a/{i:02d}.png" for i in range(10)]
    picked = refresh_rows(paths, 4)
    assert picked == ["a/00.png", "a/06.png", "b/03.png", "b/09.png"]
    assert refresh_rows(paths, 50) == sorted(paths)
    assert refresh_rows(paths, 0) == []
    assert refresh_rows([], 5) == []


def test_refresh_sets_the_statistics_of_the_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5))
    prep = Preprocessing(image_size=8, channels=1, mean=[0.0], std=[1.0])
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    assert refresh_batchnorm(model, images, prep, batch_size=32) == 1
    with torch.no_grad():
        conv = model[0](prep(images)).double()
    bn = model[1]
    torch.testing.assert_close(bn.running_mean.double(), conv.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), conv.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
    assert model.training  # the mode it had before
    model.eval()
    assert refresh_batchnorm(model, images, prep) == 1 and not model.training


def test_averaged_weights_ship_with_refreshed_statistics_only(small_dataset, tmp_path, quiet):
    """With the refresh the shipped file differs from the plain average in the BatchNorm running
    statistics and nowhere else; run.json says how many training images were read; two runs agree
    byte for byte."""
    def run(name, **kw):
        config = TrainConfig(data=str(small_dataset), out=str(tmp_path / name), model="seed_cnn", image_size=32,
                             epochs=3, batch_size=16, augment="light", normalize="fixed", lr=3e-3, **kw)
        return train(config, reporter=quiet).run_dir

    plain, refreshed, again = run("plain", bn_refresh_images=0), run("refreshed"), run("again")
    a, b = load_file(plain / "model.safetensors"), load_file(refreshed / "model.safetensors")
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert (refreshed / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    selection = json.loads((refreshed / "run.json").read_text())["selection"]
    n_train = sum(1 for line in (refreshed / "split.csv").read_text().splitlines()[1:] if line.split(",")[2] == "train")
    assert selection["select"] == "average" and selection["bn_refresh_images"] == min(2048, n_train) > 0
    assert "bn_refresh_images" not in json.loads((plain / "run.json").read_text())["selection"]
    # the last epoch's weights (last.safetensors) are not touched by the refresh
    assert (plain / "last.safetensors").read_bytes() == (refreshed / "last.safetensors").read_bytes()
