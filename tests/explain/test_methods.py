import numpy as np
import pytest
import torch
import torch.nn as nn

from medclassify.data.preprocessing import Preprocessing
from medclassify.errors import ConfigError
from medclassify.explain import METHODS, Activations, Lime, Occlusion, get_method
from medclassify.explain.overlay import render
from medclassify.explain.superpixels import slic
from medclassify.models import create_model

PREP = Preprocessing(image_size=48, channels=1, mean=[0.0], std=[1.0], normalize="fixed")


class TopLeftDetector(nn.Module):
    """Class 1 logit = mean brightness of the top-left quadrant: the only evidence is there."""

    def forward(self, x):
        s = x[..., :24, :24].mean((1, 2, 3)) * 20 - 5
        return torch.stack([-s, s], 1)


def _bright_image():
    img = np.full((48, 48, 1), 40, np.uint8)
    img[4:20, 4:20] = 220
    img[30:44, 30:44] = 220  # bright too, but the model ignores this area
    return img


@pytest.mark.parametrize("cls", [Lime, Occlusion])
def test_perturbation_methods_find_the_evidence(cls):
    kw = {"samples": 300} if cls is Lime else {}
    expl = cls(TopLeftDetector(), PREP, **kw).explain(_bright_image(), 1)
    heat = expl.heatmap
    assert heat.shape == (48, 48)
    assert heat[4:20, 4:20].mean() > 3 * heat[30:44, 30:44].mean() + 1e-6


def test_lime_is_seeded():
    a = Lime(TopLeftDetector(), PREP, samples=100).explain(_bright_image(), 1).heatmap
    b = Lime(TopLeftDetector(), PREP, samples=100).explain(_bright_image(), 1).heatmap
    assert np.array_equal(a, b)


def test_superpixels_cover_the_image_and_follow_edges():
    img = np.zeros((60, 60, 1), np.uint8)
    img[:, 30:] = 255
    labels = slic(img, n_segments=16)
    assert labels.shape == (60, 60) and labels.min() == 0
    assert 8 <= labels.max() + 1 <= 16
    # no superpixel straddles the strong vertical edge
    for s in range(labels.max() + 1):
        side = img[..., 0][labels == s]
        assert side.min() == side.max()


def test_activations_show_each_block():
    model = create_model("seed_cnn", 2, in_chans=1).eval()
    expl = Activations(model, PREP, maps_per_block=8).explain(_bright_image())
    assert len(expl.panels) == 5  # five conv blocks
    assert "32 maps" in expl.panels[0][0]
    picture = render(expl, ["a", "b"])
    assert picture.ndim == 3 and picture.shape[2] == 3


def test_registry_and_unknown_method():
    assert set(METHODS) == {"gradcam", "gradcam++", "lime", "occlusion", "activations"}
    assert get_method("GradCAM").name == "gradcam"
    with pytest.raises(ConfigError, match="Unknown explanation method 'shap'"):
        get_method("shap")


def test_lime_runs_through_onnx_runtime_when_the_run_is_exported(run_copy):
    import numpy as np

    from medclassify.explain import Lime
    from medclassify.inference.export import export_onnx
    from medclassify.run import load_run

    torch_lime = Lime.for_run(run_copy)
    assert torch_lime.onnx is None
    export_onnx(run_copy)
    onnx_lime = Lime.for_run(run_copy)
    assert onnx_lime.onnx is not None and onnx_lime.onnx.backend == "onnx"
    torch_lime.samples = onnx_lime.samples = 200
    torch_lime.bf16 = False
    path = load_run(run_copy).records("test")[0].path
    image = onnx_lime.onnx.load(path)
    a, b = torch_lime.explain(image), onnx_lime.explain(image)
    assert a.target == b.target
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-4)
    assert np.allclose(a.heatmap, b.heatmap, atol=1e-3)
