"""The notebook-facing Python API: train's keywords follow TrainConfig, results display as short
text and HTML, and every verb is reachable from `import medclassify`."""

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

import medclassify
from medclassify.config import TrainConfig
from medclassify.errors import ConfigError

FIELDS = {k: f for k, f in TrainConfig.model_fields.items() if k not in ("data", "out")}


@pytest.fixture(scope="module")
def api_result(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    # positional data, `out` by keyword, an explicit epoch count and no time_budget
    return medclassify.train(str(small_dataset), out=out, model="seed_cnn", pretrained="none", image_size=32,
                             epochs=1, batch_size=16, augment="light", quiet=True)


@pytest.fixture(scope="module")
def api_metrics(api_result):
    return api_result.run.evaluate(n_boot=200)


def test_train_signature_lists_every_setting_with_its_default():
    params = inspect.signature(medclassify.train).parameters
    assert list(params)[:2] == ["data", "out"]
    assert params["out"].default is None
    for name, field in FIELDS.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == field.get_default(call_default_factory=True), name
        assert params[name].annotation == field.annotation, name
        assert f"\n{name} : " in medclassify.train.__doc__, name


def test_unknown_keyword_names_the_nearest_and_writes_nothing(small_dataset, tmp_path):
    with pytest.raises(TypeError, match="did you mean epochs") as info:
        medclassify.train(small_dataset, tmp_path / "run", epoch=1)
    assert isinstance(info.value, ConfigError)
    assert not (tmp_path / "run").exists()


def test_invalid_value_is_a_config_error(small_dataset, tmp_path):
    with pytest.raises(ConfigError, match="image_size"):
        medclassify.train(small_dataset, tmp_path / "run", image_size=4)


def test_default_out_is_a_fresh_folder_named_after_the_data(tmp_path, monkeypatch):
    from medclassify.api import default_out

    monkeypatch.chdir(tmp_path)
    first = default_out(tmp_path / "chest_xray")
    assert first.parent.name == "runs" and first.name.startswith("chest_xray-")
    first.mkdir(parents=True)
    assert default_out(tmp_path / "chest_xray") != first


def test_explicit_epochs_runs_exactly_that_many(api_result):
    assert api_result.epochs_run == 1
    assert len(api_result.history) == 1
    info = json.loads((api_result.run_dir / "run.json").read_text())
    assert info["config"]["epochs"] == 1 and info["config"]["time_budget"] is None


def test_train_result_displays_history(api_result):
    text = repr(api_result)
    assert len(text) < 300 and "\n" not in text and "1 epoch" in text
    html = api_result._repr_html_()
    assert "<table" in html and html.count("<img") == 1


def test_metrics_show_intervals_and_figures_and_stay_a_dict(api_metrics):
    text = repr(api_metrics)
    assert len(text) < 300 and "\n" not in text and "[" in text  # intervals
    html = api_metrics._repr_html_()
    assert "<table" in html and "95% interval" in html
    assert html.count("<img") == 2  # confusion matrix and ROC
    assert 0 <= api_metrics["accuracy"] <= 1
    json.dumps(api_metrics)  # still a plain JSON-ready dict


def test_metrics_to_pandas(api_metrics):
    classes = api_metrics["classes"]
    per_class = api_metrics.to_pandas()
    assert list(per_class.index) == classes and {"precision", "recall", "f1", "support"} <= set(per_class.columns)
    assert "accuracy" in api_metrics.to_pandas("summary").index
    preds = api_metrics.to_pandas("predictions")
    assert len(preds) == api_metrics["n"]
    assert [f"prob_{c}" for c in classes] == [c for c in preds.columns if c.startswith("prob_")]


def test_predictions_list_repr_and_frame(api_result, small_dataset):
    preds = medclassify.predict(api_result.run_dir, small_dataset / "test")
    assert isinstance(preds, list) and preds[0].label in api_result.run.classes
    text = repr(preds)
    assert len(text) < 300 and f"{len(preds)} images" in text
    frame = preds.to_pandas()
    assert frame.shape == (len(preds), 8 + len(api_result.run.classes))  # with abstain_reason, ood_score, in_distribution
    assert "<table" in preds._repr_html_()


def test_explain_and_report_from_the_run(api_result, small_dataset, tmp_path):
    run = medclassify.load_run(api_result.run_dir)
    assert len(repr(run)) < 300
    image = next((small_dataset / "test").rglob("*.png"))
    expl = run.explain(image, method="gradcam", out=tmp_path / "e.png")
    assert expl.label in run.classes and expl.heatmap.shape == (32, 32)
    assert len(repr(expl)) < 300 and "<img" in expl._repr_html_()
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    from_array = run.explain(np.full((32, 32), 90, np.uint8), method="occlusion")  # pixels, not a file
    assert from_array.heatmap.shape == (32, 32) and "<img" in from_array._repr_html_()
    page = run.report(out=tmp_path / "report.html")
    assert page.read_text().startswith("<!")


def test_audit_and_compare_are_reachable(api_result, tiny_run, small_dataset):
    audit = medclassify.audit(small_dataset)
    assert len(repr(audit)) < 300 and "60 images" in repr(audit)
    assert int(audit.to_pandas().to_numpy().sum()) == 60
    assert "<table" in audit._repr_html_()
    comparison = medclassify.compare([tiny_run, api_result.run_dir])
    assert len(repr(comparison)) < 300
    assert len(comparison.to_pandas()) == 2
    assert "<table" in comparison._repr_html_()


def test_import_stays_light():
    code = "import sys, medclassify; medclassify.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_other_verbs_name_the_nearest_keyword_too(tiny_run):
    with pytest.raises(TypeError, match="did you mean split"):
        medclassify.evaluate(tiny_run, splt="val")
    with pytest.raises(TypeError, match="did you mean abstain_below"):
        medclassify.load_run(tiny_run).predict(tiny_run, abstain=0.5)
    method = inspect.signature(medclassify.load_run(tiny_run).evaluate).parameters
    assert list(method)[0] == "split" and "n_boot" in method  # the run's methods show the real keywords
