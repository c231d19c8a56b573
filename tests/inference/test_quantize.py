import json
import shutil

import numpy as np
import pytest
import timm
import torch

from medclassify.cli import main
from medclassify.errors import ConfigError, RunError
from medclassify.inference.export import exportable
from medclassify.inference.predictor import Predictor
from medclassify.inference.quantize import INT8_FILE, quantize_int8


@pytest.mark.parametrize("size", [64, 65])  # even and odd sizes: TensorFlow 'SAME' pads asymmetrically
def test_static_same_padding_computes_what_the_dynamic_one_does(size):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        before = model(x)
        fixed = exportable(model, x)
        after = fixed(x)
    assert not any(type(m).__name__ == "Conv2dSame" for m in fixed.modules())
    assert torch.allclose(before, after, atol=1e-5)


@pytest.fixture(scope="module")
def quantized_run(tiny_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("q") / "run"
    shutil.copytree(tiny_run, run_dir)
    assert main(["export", str(run_dir), "--format", "onnx", "--int8", "--max-int8-drop", "1", "-q"]) == 0
    return run_dir


def test_int8_model_is_written_with_its_measured_accuracy(quantized_run):
    section = json.loads((quantized_run / "export.json").read_text())["int8"]
    check = section["check"]
    assert (quantized_run / INT8_FILE).is_file() and section["calibration_images"] > 0
    assert check["images"] > 0 and 0 <= check["agreement"] <= 1
    assert check["accuracy_int8"] >= check["accuracy_float"] - check["max_drop"]  # (vacuous here: max_drop is 1)
    # models that agree on a fraction a of the images cannot differ by more than 1 - a in accuracy
    assert abs(check["accuracy_int8"] - check["accuracy_float"]) <= 1 - check["agreement"] + 1e-9
    assert 0 < check["accuracy_float"] <= 1 and check["max_drop"] == 1
    # the guard's decisions on both models, against the float threshold, are measured and recorded
    ood = check["ood"]
    assert ood["threshold"] == json.loads((quantized_run / "run.json").read_text())["ood"]["threshold"]
    assert 0 <= ood["flagged_float"] <= 1 and 0 <= ood["flagged_int8"] <= 1
    assert abs(ood["flagged_int8"] - ood["flagged_float"]) <= 1 - ood["flag_agreement"] + 1e-9
    assert ood["median_rel_score_diff"] >= 0
    assert not list(quantized_run.glob(".*partial*"))


def test_int8_backend_is_opt_in_and_close_to_float(quantized_run):
    assert Predictor(quantized_run).backend == "onnx"  # auto never picks int8
    int8, fp = Predictor(quantized_run, backend="onnx-int8"), Predictor(quantized_run, backend="onnx")
    from medclassify.run import load_run

    paths = [r.path for r in load_run(quantized_run).records("test")]
    batch = np.stack([fp.load(p) for p in paths])
    p8, p32 = int8.probabilities(batch), fp.probabilities(batch)
    assert int8.backend == "onnx-int8" and p8.shape == p32.shape
    assert np.allclose(p8.sum(1), 1, atol=1e-5) and np.abs(p8 - p32).mean() < 0.1


def test_int8_is_refused_when_it_loses_too_much_and_leaves_nothing(quantized_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(quantized_run, run_dir)
    (run_dir / INT8_FILE).unlink()
    meta = json.loads((run_dir / "export.json").read_text())
    del meta["int8"]
    (run_dir / "export.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="int8 quantisation .* loses"):
        quantize_int8(run_dir, max_drop=-1.0)  # a limit no model can meet
    assert not (run_dir / INT8_FILE).exists() and "int8" not in json.loads((run_dir / "export.json").read_text())
    with pytest.raises(ConfigError, match="export --int8|--int8"):
        Predictor(run_dir, backend="onnx-int8")


def test_int8_needs_a_current_float_export(run_copy):
    with pytest.raises(RunError, match="model.onnx"):
        quantize_int8(run_copy)
