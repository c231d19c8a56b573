"""Flip test-time augmentation is decided once on validation by evaluate, stored in the run, and then
used the same way by evaluation and by the Predictor."""

import json

import numpy as np
import pytest

from medclassify.evaluation.evaluate import choose_tta, evaluate
from medclassify.inference.predictor import Predictor
from medclassify.run import load_run


def test_evaluate_chooses_tta_on_validation_and_records_why(run_copy):
    metrics = evaluate(run_copy, n_boot=100)
    choice = json.loads((run_copy / "run.json").read_text())["tta"]
    bal = choice["balanced_accuracy"]
    assert choice["chosen_on"] == "val" and choice["images"] > 0
    assert choice["enabled"] == (bal["with"] > bal["without"])
    assert metrics["tta"] == choice["enabled"]
    val = json.loads((run_copy / "metrics" / "val.json").read_text())
    assert val["tta"] == choice["enabled"]
    assert val["balanced_accuracy"] == pytest.approx(bal["with"] if choice["enabled"] else bal["without"])
    assert Predictor(run_copy, backend="torch").tta == choice["enabled"]


@pytest.mark.parametrize("enabled", [True, False])
def test_evaluation_and_predictor_give_the_same_probabilities_under_either_choice(run_copy, enabled):
    run = load_run(run_copy)
    run.info["tta"] = {"enabled": enabled, "chosen_on": "val"}  # as if chosen; choose_tta keeps an existing choice
    (run_copy / "run.json").write_text(json.dumps(run.info))
    assert choose_tta(load_run(run_copy))["enabled"] is enabled
    metrics = evaluate(run_copy, n_boot=100, save=False)
    pr = metrics["predictions"]
    pred = Predictor(run_copy, backend="torch")
    assert pred.tta is enabled and metrics["tta"] is enabled
    got = np.stack([[p.probabilities[c] for c in pred.classes] for p in pred.predict_paths(pr["paths"])])
    np.testing.assert_allclose(got, np.asarray(pr["probabilities"]), atol=1e-5)


def test_an_explicit_choice_overrides_the_runs(run_copy):
    run = load_run(run_copy)
    run.info["tta"] = {"enabled": True, "chosen_on": "val"}
    (run_copy / "run.json").write_text(json.dumps(run.info))
    assert Predictor(run_copy, backend="torch", tta=False).tta is False
