"""The recipe's BatchNorm refresh after weight averaging (training/batchnorm.py)."""

import copy
import json

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from medclassify.config import TrainConfig
from medclassify.data.preprocessing import Preprocessing
from medclassify.training.batchnorm import refresh_batchnorm, refresh_decision, refresh_rows
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


def test_refresh_ships_only_when_it_raises_validation_balanced_accuracy():
    """A model whose class is the image's brightness, with BatchNorm statistics that put every image
    in one class: refreshed on images of both classes it separates them again, so the refresh is
    kept; a model already right is not changed by a refresh that does not raise the score."""
    torch.manual_seed(0)
    prep = Preprocessing(image_size=4, channels=1, mean=[0.0], std=[1.0])
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (20, 4, 4, 1), dtype=np.uint8)
    bright = rng.integers(190, 255, (20, 4, 4, 1), dtype=np.uint8)
    images, labels = np.concatenate([dark, bright]), np.array([0] * 20 + [1] * 20)

    def brightness_model():
        m = nn.Sequential(nn.Conv2d(1, 1, 4, bias=False), nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(1, 2))
        with torch.no_grad():
            m[0].weight.fill_(1 / 16)
            m[3].weight.copy_(torch.tensor([[-4.0], [4.0]]))
            m[3].bias.zero_()
        return m

    stale = brightness_model()
    stale[1].running_mean.fill_(5.0)  # every image now normalises below the mean: all "dark"
    refreshed = copy.deepcopy(stale)
    refresh_batchnorm(refreshed, images, prep)
    rows = np.arange(len(images))
    d = refresh_decision(stale, refreshed, images, rows, labels, prep, ["dark", "bright"])
    assert d["kept"] and d["val_balanced_accuracy"] == {"averaged": 0.5, "refreshed": 1.0}

    right = copy.deepcopy(refreshed)
    again = copy.deepcopy(right)
    refresh_batchnorm(again, images, prep)
    d = refresh_decision(right, again, images, rows, labels, prep, ["dark", "bright"])
    assert not d["kept"] and d["val_balanced_accuracy"]["averaged"] == 1.0
    assert not refresh_decision(stale, refreshed, images, rows[:0], labels[:0], prep, ["dark", "bright"])["kept"]


def test_shipped_weights_follow_the_refresh_decision(small_dataset, tmp_path, quiet):
    """The shipped file is the plain average or the refreshed one (BatchNorm running statistics the
    only difference), as run.json's decision says; two runs agree byte for byte."""
    def run(name, **kw):
        config = TrainConfig(data=str(small_dataset), out=str(tmp_path / name), model="seed_cnn", image_size=32,
                             epochs=3, batch_size=16, augment="light", normalize="fixed", lr=3e-3, **kw)
        return train(config, reporter=quiet).run_dir

    plain, default, again = run("plain", bn_refresh_images=0), run("default"), run("again")
    assert (default / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    selection = json.loads((default / "run.json").read_text())["selection"]
    n_train = sum(1 for line in (default / "split.csv").read_text().splitlines()[1:] if line.split(",")[2] == "train")
    decision = selection["bn_refresh"]
    assert selection["select"] == "average" and decision["images"] == min(2048, n_train) > 0
    scores = decision["val_balanced_accuracy"]
    assert decision["kept"] == (scores["refreshed"] > scores["averaged"])
    assert "bn_refresh" not in json.loads((plain / "run.json").read_text())["selection"]
    a, b = load_file(plain / "model.safetensors"), load_file(default / "model.safetensors")
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert bool(changed) == decision["kept"]
    assert (plain / "last.safetensors").read_bytes() == (default / "last.safetensors").read_bytes()
