"""One image, one answer: every path that turns a run's pixels into probabilities (evaluation,
the Predictor on PyTorch and on ONNX Runtime, explanations, a cascade's stage, the server) goes
through the one forward pass (engine.py) with the run's TTA choice and temperature."""

import numpy as np
import pytest

from medclassify.cascade import Cascade
from medclassify.config import PredictOptions
from medclassify.explain import GradCAM, Lime
from medclassify.inference.export import export_onnx
from medclassify.inference.predictor import Predictor
from medclassify.run import load_run
from medclassify.serve.service import ServedModel
from medclassify.serve.uploads import Upload
from medclassify.training.validation import score_records

pytest.importorskip("onnxruntime")


def _matrix(preds, classes):
    return np.array([[p.probabilities[c] for c in classes] for p in preds])


def test_tta_and_temperature_give_the_same_probabilities_on_every_path(run_copy, tmp_path):
    run = load_run(run_copy)
    run.update(tta={"enabled": True, "chosen_on": "val"}, calibration={"temperature": 1.7, "fitted_on": "val"})
    export_onnx(run_copy)
    run = load_run(run_copy)
    assert run.tta is True and run.temperature == 1.7
    records = run.records("test")[:6]
    paths = [r.path for r in records]
    classes = run.classes

    evaluation = np.asarray(score_records(run, records)["predictions"]["probabilities"])
    torch_pred = Predictor(run_copy, backend="torch")
    onnx_pred = Predictor(run_copy, backend="onnx")
    assert torch_pred.tta and onnx_pred.tta and onnx_pred.session is not None
    images = np.stack([torch_pred.load(p) for p in paths])
    lime = Lime.for_run(run_copy)  # auto: the exported model, through ONNX Runtime
    assert lime.onnx is not None
    gradcam = GradCAM.for_run(run_copy, predictor=torch_pred)
    (tmp_path / "one.yaml").write_text(f"stages:\n  only:\n    run: {run_copy}\n")
    cascade_results, _ = Cascade(tmp_path / "one.yaml", PredictOptions(backend="torch")).predict_paths(paths)
    served = ServedModel(run_copy, PredictOptions(backend="onnx"))

    def serve(path):
        with open(path, "rb") as f:
            data = f.read()
        answer = served.predict(Upload(path=tmp_path / "upload.png", data=data, format="PNG", width=32, height=32))
        return [answer["probabilities"][c] for c in classes]

    paths_by_name = {
        "predictor torch": _matrix(torch_pred.predict_paths(paths), classes),
        "predictor onnx": _matrix(onnx_pred.predict_paths(paths), classes),
        "explain (LIME's forward, ONNX)": lime.predict(images),
        "explain (Grad-CAM's shown probabilities)": np.stack([gradcam.explain(im).probabilities for im in images]),
        "cascade stage": np.array([[r.steps[0].probabilities[c] for c in classes] for r in cascade_results]),
        "serve": np.array([serve(p) for p in paths]),
    }
    for name, probs in paths_by_name.items():
        np.testing.assert_allclose(probs, evaluation, atol=2e-5, err_msg=name)
    # the check has teeth: without TTA, or at temperature 1, the probabilities differ
    plain = _matrix(Predictor(run_copy, backend="torch", tta=False).predict_paths(paths), classes)
    assert np.abs(plain - evaluation).max() > 1e-4
