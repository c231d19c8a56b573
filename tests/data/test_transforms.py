import pytest
import torch

from medclassify.data.transforms import PRESETS, augment, get_preset
from medclassify.errors import ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_keep_shape_and_range(name):
    x = torch.rand(6, 1, 32, 32)
    out = augment(x.clone(), get_preset(name), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    if name == "none":
        assert torch.equal(out, x)
    else:
        assert not torch.equal(out, x)


def test_augmentation_is_seeded_and_per_image():
    x = torch.rand(1, 1, 16, 16).repeat(8, 1, 1, 1)
    a = augment(x.clone(), get_preset("medical"), torch.Generator().manual_seed(1))
    b = augment(x.clone(), get_preset("medical"), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="Unknown augmentation preset"):
        get_preset("extreme")
