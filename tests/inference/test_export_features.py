"""The ONNX `features` output is the guard's whole feature vector (the pooled guard layers, then the
penultimate features), equal to PyTorch's; an ONNX file exported before the layers is not scored by
a layered guard."""

import warnings

import numpy as np
import pytest
import torch

from medclassify.engine import logits_and_features
from medclassify.inference.predictor import Predictor
from medclassify.run import load_run

pytest.importorskip("onnxruntime")


def test_onnx_features_match_pytorch_column_for_column(run_copy):
    import onnxruntime as ort

    from medclassify.inference.export import export_onnx

    meta = export_onnx(run_copy)
    assert meta["parity"]["ood_agreement"] == 1.0
    session = ort.InferenceSession(str(run_copy / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[1].shape[-1] == 384
    model = load_run(run_copy).build_model().float().eval()
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        _, f_torch = logits_and_features(model, x)
    f_onnx = session.run(None, {"input": x.numpy()})[1]
    assert f_onnx.shape == (5, 384)
    for cols in (slice(0, 64), slice(64, 320), slice(320, 384)):  # quarter-resolution spread, last stage, penultimate
        np.testing.assert_allclose(f_onnx[:, cols], f_torch[:, cols].numpy(), rtol=1e-4, atol=1e-5)


class _PenultimateOnly(torch.nn.Module):
    """What the export traced before the guard read its layers."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        fmap = self.model.forward_features(x)
        feats = self.model.forward_head(fmap, pre_logits=True)
        return self.model.get_classifier()(feats), feats


def test_an_onnx_file_without_the_layers_is_not_scored_by_a_layered_guard(run_copy, tmp_path):
    from medclassify.inference.export import exportable

    dummy = torch.zeros(2, 1, 32, 32)
    model = exportable(load_run(run_copy).build_model().float().eval(), dummy)
    old = tmp_path / "old.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_PenultimateOnly(model).eval(), (dummy,), str(old), input_names=["input"],
                          output_names=["logits", "features"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
    auto = Predictor(run_copy, backend="auto", onnx_file=old)
    assert auto.backend == "torch" and auto.guard is not None and "before its layers" in auto.fallback
    strict = Predictor(run_copy, backend="onnx", onnx_file=old)
    assert strict.backend == "onnx" and strict.guard is None and "export it again" in strict.guard_reason
    img = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    assert strict.predict_array(img).ood_score is None and auto.predict_array(img).ood_score is not None
