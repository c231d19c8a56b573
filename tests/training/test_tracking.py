"""MLflow tracking against a real local store (sqlite, artifacts in a temporary folder), read back
with MlflowClient: the training's params and epochs, the test figures with their intervals, the
run's files, and the registered model version."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "medclassify"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medclassify.cli"]


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One sqlite store for the module: creating its tables takes seconds."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.fixture
def store(store_uri, tmp_path, monkeypatch, request):
    """The store, with this test's own experiment (artifacts under tmp_path) named in MLFLOW_EXPERIMENT_NAME."""
    from mlflow import MlflowClient

    name = f"chest-{request.node.name}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder of the test session
    client = MlflowClient(tracking_uri=store_uri)
    client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    client.experiment = name
    return client


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, path)}


def test_train_evaluate_report_export_logged_and_registered(small_dataset, tmp_path, store, quiet):
    from medclassify.config import TrainConfig
    from medclassify.evaluation.evaluate import evaluate
    from medclassify.reports.report import build_report
    from medclassify.inference.export import export_onnx
    from medclassify.training.fit import train

    config = TrainConfig(data=str(small_dataset), out=str(tmp_path / "run"), model="seed_cnn", image_size=32, epochs=2,
                         time_budget=None, batch_size=16, augment="light", early_stopping=0, pretrained="none",
                         track="mlflow", register_model="chest-classifier")
    run_dir = train(config, reporter=quiet).run_dir
    tracking = json.loads((run_dir / "run.json").read_text())["tracking"]
    run_id = tracking["run_id"]
    assert tracking["registered"] == {"name": "chest-classifier", "version": "1"}

    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert store.get_experiment(run.info.experiment_id).name == store.experiment
    params = run.data.params
    assert params["model"] == "seed_cnn" and params["image_size"] == "32" and params["epochs"] == "2"
    assert params["resolved_lr"] == "0.001" and params["track"] == "mlflow"
    for key in ("train_loss", "val_accuracy", "val_balanced_accuracy", "val_auc", "lr", "train_images_per_s"):
        steps = [m.step for m in store.get_metric_history(run_id, key)]
        assert steps == [1, 2], key
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header and the two epochs logged above

    metrics = evaluate(run_dir, reporter=quiet, n_boot=200)
    report = build_report(run_dir, reporter=quiet)
    export_onnx(run_dir, reporter=quiet)

    data = store.get_run(run_id).data.metrics
    assert data["test_accuracy"] == pytest.approx(metrics["accuracy"])
    lo, hi = metrics["ci"]["accuracy"]
    assert data["test_accuracy_ci_low"] == pytest.approx(lo) and data["test_accuracy_ci_high"] == pytest.approx(hi)
    # every interval evaluate gives is logged around its figure; one it withholds (a perfectly separating
    # model's AUC has no bootstrap spread to show) is not logged as zero width
    for key, ci in metrics["ci"].items():
        if ci is None:
            assert f"test_{key}_ci_low" not in data and f"test_{key}_ci_high" not in data, key
        elif metrics.get(key) is not None:
            assert data[f"test_{key}_ci_low"] <= data[f"test_{key}"] + 1e-9 <= data[f"test_{key}_ci_high"] + 2e-9, key
    assert "test_auc" in data
    assert data["test_n"] == metrics["n"]
    assert data["selected_val_accuracy"] == pytest.approx(json.loads((run_dir / "metrics" / "val.json").read_text())["accuracy"])

    assert {"run.json", "history.csv", "metrics", "report.html", "model"} <= _artifacts(store, run_id)
    assert {"metrics/val.json", "metrics/test.json"} <= _artifacts(store, run_id, "metrics")
    assert {"model/model.safetensors", "model/run.json", "model/model.onnx", "model/export.json"} <= _artifacts(store, run_id, "model")
    # The uploaded files are the run's own: the report, and the run.json with the calibration evaluate wrote.
    got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report.html", tracking_uri=tracking["tracking_uri"],
                                                   dst_path=str(tmp_path / "dl")))
    assert got.read_bytes() == report.read_bytes()
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run.json", tracking_uri=tracking["tracking_uri"],
                                              dst_path=str(tmp_path / "dl2"))
    assert json.loads(Path(got).read_text()) == json.loads((run_dir / "run.json").read_text())

    version = store.get_model_version("chest-classifier", "1")
    assert version.run_id == run_id and version.source.endswith("/model")


def test_failed_training_ends_the_mlflow_run_failed_with_its_error(tmp_path, store, quiet):
    from medclassify.config import TrainConfig
    from medclassify.errors import MedClassifyError
    from medclassify.training.fit import train

    config = TrainConfig(data=str(tmp_path / "no-such-folder"), out=str(tmp_path / "run"), model="seed_cnn", image_size=32,
                         epochs=1, time_budget=None, track="mlflow")
    with pytest.raises(MedClassifyError) as e:
        train(config, reporter=quiet)
    [run] = store.search_runs([store.get_experiment_by_name(store.experiment).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["medclassify.error"] == str(e.value)
    assert not (tmp_path / "run").exists()


def test_untracked_run_has_no_tracking_record(tiny_run):
    assert "tracking" not in json.loads((tiny_run / "run.json").read_text())


def test_register_without_tracking_is_one_line(small_dataset, tmp_path):
    r = subprocess.run(_cli() + ["train", str(small_dataset), "--out", str(tmp_path / "run"), "--register", "m"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--track mlflow" in r.stderr
    assert not (tmp_path / "run").exists()


def test_missing_mlflow_names_the_install_command(small_dataset, tmp_path):
    # mlflow made unimportable for this one process, as on a machine without the extra
    code = "import sys; sys.modules['mlflow'] = None; from medclassify.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "train", str(small_dataset), "--out", str(tmp_path / "run"),
                        "--track", "mlflow"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "pip install 'medclassify[track]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
