"""Every claim of evaluate's output and report.html about calibration, split, weights, TTA, threshold
and warnings must match the run record, in every state a run can be in."""

import copy
import itertools
import json
import re
import shutil

import numpy as np
import pytest

from medclassify.evaluation.narrative import console_lines, facts

CALIBRATION = {"temperature": 1.734, "fitted_on": "val", "n": 120, "ece_before": 0.12, "ece_after": 0.04}
OP = {"target": {"sensitivity": 0.95}, "chosen_on": "val", "threshold": 0.137, "positive_class": "lesion"}


def _state(info: dict, metrics: dict, calibrated: bool, threshold: bool, tta: bool, weights: str, split: str):
    info, metrics = copy.deepcopy(info), copy.deepcopy(metrics)
    info.pop("calibration", None)
    info.pop("calibration_skipped", None)
    if calibrated:
        info["calibration"] = dict(CALIBRATION)
    else:
        info["calibration_skipped"] = "its validation split has only 4 images (calibration needs 50)"
    info["tta"] = {"enabled": tta, "chosen_on": "val"}
    metrics["tta"] = tta
    info["config"]["weights"] = "/models/chest_start.safetensors" if weights == "file" else None
    info["pretrained"] = "imagenet" if weights == "pretrained" else "none"
    metrics["split"] = split
    metrics.pop("operating_point", None)
    if threshold:
        fig = {"threshold": OP["threshold"], "sensitivity": 0.9, "specificity": 0.5, "ppv": 0.6, "npv": 0.8,
               "ci": {"sensitivity": [0.6, 0.99], "specificity": [0.2, 0.8]}}
        metrics["operating_point"] = dict(OP, **{"val": fig, split: fig})
    from medclassify.evaluation.alarms import metric_warnings

    metrics["warnings"] = metric_warnings(metrics)
    return info, metrics


def _check_claims(text: str, calibrated, threshold, tta, weights, split):
    if calibrated:
        assert "temperature 1.734, fitted on 120 validation images" in text
        assert "not fitted" not in text
    else:
        assert "not fitted because its validation split has only 4 images" in text
        assert re.search(r"temperature \d", text) is None and "fitted on validation" not in text
    if split == "test":
        assert "never saw" in text and "optimistic" not in text
    else:
        assert "never saw" not in text and "optimistic" in text
    if weights == "file":
        assert "weights file chest_start.safetensors" in text
    elif weights == "pretrained":
        assert "imagenet-pretrained" in text
    else:
        assert "from scratch" in text
    assert "none weights" not in text
    assert ("Test-time augmentation: on" in text) == tta and ("Test-time augmentation: off" in text) == (not tta)
    if threshold:
        assert "at least 0.137" in text and "no threshold was chosen" not in text
    else:
        assert "no threshold was chosen" in text and "at least 0.137" not in text


STATES = list(itertools.product([True, False], [True, False], [True, False], ["pretrained", "file", "scratch"],
                                 ["test", "val"]))


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    from medclassify.evaluation.evaluate import evaluate
    from medclassify.run import load_run

    run_dir = tmp_path_factory.mktemp("narrative") / "run"
    shutil.copytree(tiny_run, run_dir)
    metrics = evaluate(run_dir, n_boot=200)
    return load_run(run_dir), metrics


@pytest.mark.parametrize("state", STATES, ids=lambda s: "-".join(map(str, s)))
def test_console_sentences_match_the_record(evaluated, state):
    run, metrics = evaluated
    info, m = _state(run.info, metrics, *state)
    _check_claims("\n".join(console_lines(facts(info, m))), *state)


# a covering subset of the states, each rendered as the full page (figures included)
RENDERED = [(True, True, True, "pretrained", "test"), (False, False, False, "scratch", "val"),
            (True, False, True, "file", "val"), (False, True, False, "file", "test"),
            (False, False, True, "pretrained", "test"), (True, True, False, "scratch", "val")]


@pytest.mark.parametrize("state", RENDERED, ids=lambda s: "-".join(map(str, s)))
def test_report_claims_match_the_record(evaluated, state):
    from medclassify.reports.report import render_report

    run, metrics = evaluated
    info, m = _state(run.info, metrics, *state)
    page = render_report(type(run)(run.path, info), m, n_wrong=0)
    text = re.sub(r"<[^>]+>", " ", page)
    text = re.sub(r"\s+", " ", text)
    _check_claims(text, *state)
    top = page.split('id="how-to-read"')[0]
    for w in m["warnings"]:
        assert w["message"].split(":")[0][:40] in re.sub(r"\s+", " ", top)  # warnings come before everything else
    if state[4] == "val":
        assert "validation images, which chose the kept epoch" in top


def test_evaluate_prints_no_temperature_when_uncalibrated(tiny_run, tmp_path, capsys):
    from medclassify.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["evaluate", str(run), "--bootstrap", "200", "-q"]) == 0
    out = capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert "calibration" not in info and "calibration needs 50" in info["calibration_skipped"]
    assert "Calibration: not fitted because" in out
    assert re.search(r"temperature \d", out) is None


def test_all_one_class_model_is_flagged_in_console_json_and_report(tiny_run, tmp_path, capsys):
    """The issue's useless model: zero the last layer so every image gets the same scores, class 1."""
    from safetensors.torch import load_file, save_file

    from medclassify.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = load_file(str(run / "model.safetensors"))
    head = [k for k, v in weights.items() if v.ndim == 2 and v.shape[0] == 2][-1]
    weights[head].zero_()
    weights[head.replace("weight", "bias")].copy_(weights[head.replace("weight", "bias")].new_tensor([0.0, 2.0]))
    save_file(weights, str(run / "model.safetensors"))
    assert main(["evaluate", str(run), "--bootstrap", "200", "-q"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "metrics" / "test.json").read_text())
    codes = {w["code"] for w in saved["warnings"]}
    assert {"chance", "never_predicted", "small_split"} <= codes
    assert "warning: AUC 0.500" in out and "never predicted lesion" in out
    # honest intervals for the all-one-class model
    assert saved["sensitivity"] == 1.0 and saved["ci"]["sensitivity"][0] < 0.9
    assert saved["specificity"] == 0.0 and saved["ci"]["specificity"][1] > 0
    assert main(["report", str(run), "-q"]) == 0
    page = (run / "report.html").read_text()
    top = page.split('id="how-to-read"')[0]
    assert 'id="warnings"' in top and "no better than chance" in top and "never predicted lesion" in top
