import gc

import numpy as np
import pytest
import torch
import torch.nn as nn

from medclassify.data.preprocessing import Preprocessing
from medclassify.data.synthetic import synthetic_image
from medclassify.explain import GradCAM, GradCAMPlusPlus
from medclassify.explain.targets import find_target_layer
from medclassify.models import create_model

PREP = Preprocessing(image_size=64, channels=1, mean=[0.5], std=[0.25], normalize="fixed")


def _image(seed=0, blobs=1):
    return synthetic_image(np.random.default_rng(seed), 64, blobs)[..., None]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_heatmap_for_binary_and_multiclass_seed_cnn(cls, classes):
    torch.manual_seed(0)
    model = create_model("seed_cnn", classes, in_chans=1).eval()
    cam = cls(model, PREP)
    for target in range(classes):
        expl = cam.explain(_image(), target)
        assert expl.heatmap.shape == (64, 64)
        assert expl.heatmap.min() >= 0 and expl.heatmap.max() <= 1
        assert expl.probabilities.shape == (classes,)
    assert cam.explain(_image()).target == int(expl.probabilities.argmax())


def test_target_layer_is_the_last_feature_map_before_pooling():
    seed = create_model("seed_cnn", 2, in_chans=1).eval()
    name, layer = find_target_layer(seed, torch.zeros(1, 1, 64, 64))
    assert name == "features.18" and isinstance(layer, nn.ReLU)  # not the final max-pool
    timm_cnn = create_model("resnet10t", 3, in_chans=3).eval()
    name, _ = find_target_layer(timm_cnn, torch.zeros(1, 3, 64, 64))
    assert name.startswith("layer4")


def test_timm_cnn_heatmap():
    torch.manual_seed(0)
    model = create_model("resnet10t", 3, in_chans=3).eval()
    prep = Preprocessing(image_size=64, channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    rgb = np.repeat(_image(), 3, axis=2)
    expl = GradCAM(model, prep).explain(rgb)  # the predicted class
    assert expl.heatmap.shape == (64, 64) and expl.heatmap.max() == pytest.approx(1.0)
    assert expl.target == int(expl.probabilities.argmax())


class SingleLogit(nn.Module):
    """A binary head with one logit: brightness is evidence for class 1, darkness for class 0.
    Channel 0 of the target layer fires on bright pixels, channel 1 on dark ones, so the two
    classes' evidence lies in different places of the feature maps (with a uniform image, or one
    channel, Grad-CAM's channel-mean weights could not localise anything)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight[0].fill_(0.1)
            self.conv.weight[1].fill_(-0.1)
        self.relu = nn.ReLU()

    def forward(self, x):
        a = self.relu(self.conv(x)).mean((2, 3))
        return (a[:, 0] - a[:, 1]).unsqueeze(1)


def test_single_logit_binary_head():
    """Class 1's map points at the bright quadrant, class 0's at the dark one. Either assertion fails
    when the channel weights ignore the gradient (uniform weights light up both quadrants) or when
    class 0 is not explained with -logit (then both maps point at the bright quadrant)."""
    model = SingleLogit().eval()
    img = np.full((64, 64, 1), 128, np.uint8)  # the mean: no evidence either way
    img[:32, :32] = 230  # bright top-left
    img[32:, 32:] = 20  # dark bottom-right
    cam = GradCAM(model, PREP, layer="relu")
    bright, dark = (slice(4, 28), slice(4, 28)), (slice(36, 60), slice(36, 60))  # away from the blur at the edges
    for target, lit, unlit in ((1, bright, dark), (0, dark, bright)):
        expl = cam.explain(img, target)
        assert expl.probabilities.shape == (2,)
        assert expl.heatmap[lit].mean() > 0.9 and expl.heatmap[unlit].mean() < 0.1, (target, expl.heatmap[lit].mean(),
                                                                                      expl.heatmap[unlit].mean())


def test_the_gradcam_of_a_blob_detector_points_at_the_blob():
    """A fixed model that detects bright spots: conv = centre-surround filter."""

    class BlobDetector(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 9, padding=4, bias=False)
            k = -torch.ones(9, 9) / 80
            k[4, 4] = 1.0
            k[3:6, 3:6] += 0.1
            self.conv.weight.data[:] = k
            self.act = nn.ReLU()

        def forward(self, x):
            s = self.act(self.conv(x)).mean((1, 2, 3))
            return torch.stack([-s, s], 1)

    where: list = []
    img = synthetic_image(np.random.default_rng(3), 64, 1, centres=where)[..., None]
    heat = GradCAM(BlobDetector().eval(), PREP, layer="act").explain(img, 1).heatmap
    cy, cx = (int(round(v)) for v in where[0])
    assert heat[cy, cx] >= np.quantile(heat, 0.8)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.fixture
def one_thread():
    """500 tiny calls: one thread avoids thread hand-offs that dominate on a busy 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_hooks_are_released_and_memory_does_not_grow_over_500_calls(cls, one_thread):
    """A kept hook, activation or autograd graph per call would add ~200 KB each here: 500 calls
    would grow the process by ~100 MB. (RSS rather than tracemalloc, which slows 500 calls 20-fold.)"""
    torch.manual_seed(0)
    model = create_model("seed_cnn", 2, in_chans=1).eval()
    cam = cls(model, Preprocessing(image_size=32, channels=1, mean=[0.5], std=[0.25]))
    small = _image()[::2, ::2]
    before = _hooks(model)
    for _ in range(30):  # warm-up: allocator pools and caches settle
        cam.explain(small, 1)
    gc.collect()
    base = _rss_bytes()
    for _ in range(500):
        cam.explain(small, 1)
        assert _hooks(model) == before == 0
    gc.collect()
    grown = _rss_bytes() - base
    assert grown < 20_000_000, f"{cls.name}: process grew by {grown / 1e6:.1f} MB over 500 calls"


def test_hooks_are_released_when_the_forward_pass_fails():
    model = create_model("seed_cnn", 2, in_chans=1).eval()
    cam = GradCAM(model, PREP)
    cam.explain(_image(), 0)
    with pytest.raises(RuntimeError):
        cam.explain(np.zeros((64, 64, 3), np.uint8), 0)  # 3 channels into a 1-channel model
    assert _hooks(model) == 0
