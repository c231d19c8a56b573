import numpy as np
import pytest
import torch
import torch.nn as nn

from medclassify.data.preprocessing import Preprocessing
from medclassify.errors import ConfigError
from medclassify.explain import METHODS, Activations, Lime, Occlusion, get_method
from medclassify.explain.overlay import render_png
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


def test_superpixels_are_connected_on_a_textured_image():
    from medclassify.explain.superpixels import components_per_segment

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224]
    img = (127 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 25, (224, 224))).clip(0, 255)
    labels = slic(img.astype(np.uint8)[..., None], n_segments=50)
    assert labels.max() + 1 >= 15
    assert components_per_segment(labels).max() == 1
    # segments follow the texture, not a square grid (what too high a compactness gives on grey images)
    rectangles = sum((labels == s).sum() == np.prod(np.ptp(np.argwhere(labels == s), 0) + 1) for s in range(labels.max() + 1))
    assert rectangles < 0.2 * (labels.max() + 1)


def test_flat_map_is_reported_not_drawn_as_a_silent_copy():
    from io import BytesIO

    from PIL import Image

    from medclassify.explain.base import Explanation

    img = _bright_image()
    expl = Explanation("gradcam", img, 1, np.array([0.3, 0.7]), np.zeros((48, 48), np.float32))
    assert expl.flat and expl.message(["normal", "lesion"]) == "no localised evidence for lesion in this image"
    busy = Explanation("gradcam", img, 1, np.array([0.3, 0.7]), np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48))
    assert not busy.flat and busy.message(["normal", "lesion"]) is None
    png = np.asarray(Image.open(BytesIO(render_png(expl, ["normal", "lesion"], source=img))).convert("RGB"))
    left, right = png[:, : png.shape[1] // 2], png[:, png.shape[1] // 2 :]
    assert not np.array_equal(left, right[:, : left.shape[1]])  # the message is drawn over the right panel


def test_overlay_is_drawn_on_the_original_at_its_resolution(tmp_path):
    from io import BytesIO

    from PIL import Image

    from medclassify.explain.base import Explanation
    from medclassify.explain.overlay import heatmap_on_original, overlay_on_original

    original = np.zeros((300, 200), np.uint8)
    Image.fromarray(original).save(tmp_path / "tall.png")
    heat = np.zeros((48, 48), np.float32)
    heat[:, 24:] = 1.0  # right half of the padded square (pad: the image occupies columns 8..39)
    up = heatmap_on_original(heat, (300, 200), "pad")
    assert up.shape == (300, 200) and up[:, :90].max() < 0.1 and up[:, 110:].min() > 0.9
    expl = Explanation("gradcam", np.zeros((48, 48, 1), np.uint8), 1, np.array([0.2, 0.8]), heat)
    assert overlay_on_original(tmp_path / "tall.png", expl).shape == (300, 200, 3)
    fig = Image.open(BytesIO(render_png(expl, ["a", "b"], source=tmp_path / "tall.png")))
    assert fig.size[0] >= 400  # two panels at the original's 200 px width, plus the colour bar


def test_activations_show_each_block():
    model = create_model("seed_cnn", 2, in_chans=1).eval()
    expl = Activations(model, PREP, maps_per_block=8).explain(_bright_image())
    assert len(expl.panels) == 5  # five conv blocks
    assert expl.panels[0][0].startswith("Stage 1 of 5: 32 maps")
    assert expl.panels[-1][0].startswith("Stage 5 of 5")
    from io import BytesIO

    from PIL import Image

    picture = np.asarray(Image.open(BytesIO(render_png(expl, ["a", "b"]))).convert("RGB"))
    assert picture.ndim == 3 and picture.shape[0] > 200
    # no bright painted separators: the background between tiles is the figure's white, never viridis yellow
    yellow = (picture[..., 0] > 230) & (picture[..., 1] > 210) & (picture[..., 2] < 80)
    assert yellow.mean() < 0.05


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


def test_explain_command_path_runs_lime_through_onnx_runtime_on_an_exported_run(run_copy, tmp_path):
    """`medclassify explain --method lime` (explain_files_detailed) takes the ONNX path once the run
    is exported, and says so."""
    from medclassify.explain.batch import explain_files_detailed
    from medclassify.inference.export import export_onnx
    from medclassify.reporting import Reporter
    from medclassify.run import load_run

    image = load_run(run_copy).records("test")[0].path
    before = Reporter(quiet=True)
    explain_files_detailed(run_copy, image, "lime", out=tmp_path / "a.png", reporter=before, samples=50)
    assert not any("ONNX Runtime" in m for _, m in before.messages)
    export_onnx(run_copy)
    after = Reporter(quiet=True)
    explain_files_detailed(run_copy, image, "lime", out=tmp_path / "b.png", reporter=after, samples=50)
    assert any("ONNX Runtime" in m for _, m in after.messages)
    assert (tmp_path / "b.png").is_file()
