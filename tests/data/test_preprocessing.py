import numpy as np
import torch

from medclassify.data.preprocessing import Preprocessing, equalize


def _levels(rng, shape):
    return torch.from_numpy(rng.integers(0, 256, size=shape).astype(np.float32) / 255.0)


def test_equalize_ignores_any_increasing_change_of_intensity():
    rng = np.random.default_rng(0)
    x = _levels(rng, (3, 1, 16, 16)) * (127 / 255)  # levels 0..127
    # a strictly increasing map of those levels onto 0..255: contrast and a gamma-like curve at once
    i = np.arange(128)
    lut = i + np.round(128 * (i / 127) ** 2).astype(np.int64)
    assert np.all(np.diff(lut) > 0) and lut[-1] == 255
    mapped = torch.from_numpy(lut[(x * 255).round().long().numpy()].astype(np.float32) / 255.0)
    assert torch.allclose(equalize(x), equalize(mapped), atol=1e-6)


def test_equalize_keeps_the_background_black_and_spreads_the_rest():
    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, 5:15, 5:15] = torch.linspace(0.3, 0.5, 100).reshape(10, 10)  # dim content on a black pad
    y = equalize(x)
    assert y[0, 0, 0, 0] == 0  # 300 of 400 pixels are black: they stay at 0, not at 0.75
    inside = y[0, 0, 5:15, 5:15]
    assert inside.max() == 1.0 and inside.min() > 0
    assert 0.4 < inside.median() < 0.6  # the content now spans the whole range evenly


def test_equalize_is_per_image_and_handles_a_flat_image():
    x = torch.stack([torch.full((1, 4, 4), 0.5), torch.rand(1, 4, 4)])
    y = equalize(x)
    assert torch.all(y[0] == 0)  # a single level: nothing to spread, no division by zero
    assert torch.allclose(y[1], equalize(x[1:2])[0])


def test_preprocessing_equalize_then_fixed_normalisation():
    prep = Preprocessing(image_size=8, channels=1, mean=[0.5], std=[0.25], normalize="equalize")
    batch = np.random.default_rng(1).integers(0, 120, size=(2, 8, 8, 1), dtype=np.uint8)  # a dark image
    x = prep(batch)
    assert x.shape == (2, 1, 8, 8)
    assert torch.isclose(x.max(), torch.tensor(2.0))  # level 1.0 after equalisation -> (1 - 0.5) / 0.25
    assert torch.isclose(x.min(), torch.tensor(-2.0))
