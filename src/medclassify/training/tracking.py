"""Experiment tracking: a training's settings, epochs, test figures and files, logged to MLflow
(`--track mlflow`). The MLflow run's id is kept in run.json's "tracking", so the later verbs
(evaluate, report, export) log into the same MLflow run. Only rank 0 of a distributed job logs.

What the registry gets (`--register NAME`): the artifact folder `model/` of the MLflow run, which
holds what `medclassify predict` needs to load the run (model.safetensors and run.json), and
model.onnx with export.json once exported. It is registered as a plain folder, not as an MLflow
flavour: a pickled torch module would tie the registry to this code's classes, while the
safetensors weights and run.json load with any medclassify of the same format version."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

INSTALL = "pip install 'medclassify[track]'"
DEFAULT_EXPERIMENT = "medclassify"
MODEL_FILES = ("model.safetensors", "run.json", "model.onnx", "export.json")  # logged under model/ (run.json at the top too)
RUN_FILES = ("run.json", "history.csv", "metrics", "report.html", "model.safetensors", "model.onnx", "export.json")


def is_rank_zero() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Tracker:
    """Tracking off (or a rank other than 0): every call does nothing."""

    run_id: str | None = None

    def start(self, config, run_dir: Path, resume: dict | None = None) -> dict | None:
        return None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        pass

    def log_test(self, metrics: dict) -> None:
        pass

    def log_artifacts(self, folder: Path, names: tuple[str, ...] = RUN_FILES) -> None:
        pass

    def register(self, name: str) -> dict | None:
        return None

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        pass


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise ConfigError("--track mlflow needs the mlflow package, which is not installed.", f"{INSTALL}.") from None
    return mlflow


def absolute_uri(uri: str) -> str:
    """A local store named relative to the working folder, made absolute: the later verbs may run elsewhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).resolve().as_uri()
    return uri


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _param(v: Any) -> str:
    return str(v)[:6000]  # MLflow's limit on a parameter value


class MlflowTracker(Tracker):
    def __init__(self, reporter=None):
        self.mlflow = _mlflow()
        self.reporter = reporter
        self.client = None
        self.failed = False

    def _connect(self, uri: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)

    def _guard(self, what: str, fn, *args, **kwargs):
        """Logging that fails after the start (a server gone away) warns once and stops tracking;
        the training and its run directory matter more than the copy in MLflow."""
        if self.failed or not self.run_id:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any client or store failure
            self.failed = True
            if self.reporter:
                self.reporter.warn(f"MLflow tracking stopped: {what} failed ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:160] if str(e) else ''}); the run directory is complete.")
            return None

    def start(self, config, run_dir: Path, resume: dict | None = None) -> dict:
        """Open the MLflow run (or reopen `resume`'s, from run.json) and return run.json's "tracking" record."""
        uri = absolute_uri(resume["tracking_uri"] if resume else self.mlflow.get_tracking_uri())
        try:
            self._connect(uri)
            if resume:
                self.run_id = resume["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                experiment_id = resume.get("experiment_id")
            else:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
                exp = self.client.get_experiment_by_name(name)
                experiment_id = exp.experiment_id if exp else self.client.create_experiment(name)
                run = self.client.create_run(experiment_id, run_name=Path(config.out).name,
                                             tags={"medclassify.run_dir": str(Path(config.out).resolve())})
                self.run_id = run.info.run_id
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a bad URI, an unreachable server, a locked database
            raise ConfigError(f"Cannot start MLflow tracking at {uri} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}).",
                              "check MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db or http://host:5000), or drop --track.") from None
        if self.reporter:
            self.reporter.info(f"Tracking in MLflow: run {self.run_id} at {uri}.")
        return {"backend": "mlflow", "tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id}

    def reopen(self, record: dict) -> None:
        """Log into an existing MLflow run (the later verbs); its status is left as it is."""
        self._connect(record["tracking_uri"])
        self.run_id = record["run_id"]

    def _batch(self, metrics: dict[str, float], step: int = 0, params: dict | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, step) for k, v in metrics.items()]
        ps = [Param(k, _param(v)) for k, v in (params or {}).items()]
        for i in range(0, len(ps), 100):  # MLflow's per-request limits: 100 params, 1000 metrics
            self.client.log_batch(self.run_id, params=ps[i:i + 100])
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def log_params(self, params: dict[str, Any]) -> None:
        self._guard("logging the settings", self._batch, {}, params=params)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        values = {k: _number(v) for k, v in metrics.items() if k != "epoch"}
        self._guard(f"logging epoch {epoch}", self._batch, {k: v for k, v in values.items() if v is not None}, step=epoch)

    def log_test(self, metrics: dict) -> None:
        self._guard(f"logging the {metrics.get('split')} metrics", self._batch, split_metrics(metrics))

    def log_artifacts(self, folder: Path, names: tuple[str, ...] = RUN_FILES) -> None:
        self._guard("uploading the run's files", self._upload, Path(folder), names)

    def _upload(self, folder: Path, names: tuple[str, ...]) -> None:
        for name in names:
            p = folder / name
            if p.is_dir():
                self.client.log_artifacts(self.run_id, str(p), name)
            elif p.is_file():
                if name not in MODEL_FILES or name == "run.json":
                    self.client.log_artifact(self.run_id, str(p))
                if name in MODEL_FILES:
                    self.client.log_artifact(self.run_id, str(p), "model")

    def register(self, name: str) -> dict | None:
        return self._guard(f"registering model {name!r}", self._register, name)

    def _register(self, name: str) -> dict:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/model"
        version = self.client.create_model_version(name, source, run_id=self.run_id)
        if self.reporter:
            self.reporter.info(f"Registered the model as {name!r} version {version.version} in MLflow.")
        return {"name": name, "version": str(version.version)}

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        if error:
            self._guard("logging the error", self.client.set_tag, self.run_id, "medclassify.error", error[:5000])
        self._guard("closing the MLflow run", self.client.set_terminated, self.run_id, status)


def split_metrics(metrics: dict) -> dict[str, float]:
    """A metrics/<split>.json's overall figures and their 95% intervals, as flat MLflow metrics
    (test_accuracy, test_accuracy_ci_low, test_accuracy_ci_high, ...). The validation split's are
    "selected_val_*" (the kept checkpoint and TTA variant): "val_*" are the per-epoch curves."""
    split = metrics.get("split", "test")
    split = "selected_val" if split == "val" else split
    out = {}
    for k, v in metrics.items():
        if (x := _number(v)) is not None and k != "n":
            out[f"{split}_{k}"] = x
    out[f"{split}_n"] = float(metrics.get("n", 0))
    for k, (lo, hi) in (metrics.get("ci") or {}).items():
        for suffix, v in (("ci_low", lo), ("ci_high", hi)):
            if (x := _number(v)) is not None:
                out[f"{split}_{k}_{suffix}"] = x
    return out


def make_tracker(config, reporter=None) -> Tracker:
    """The training's tracker from --track/--register; checks mlflow is installed before any work."""
    if config.register_model and config.track != "mlflow":
        raise ConfigError(f"--register {config.register_model} registers the model in MLflow, but tracking is off.",
                          "add --track mlflow.")
    if config.track != "mlflow" or not is_rank_zero():
        return Tracker()
    return MlflowTracker(reporter)


def run_tracker(info: dict, reporter=None) -> Tracker:
    """For a verb after training: the MLflow run the training logged to (run.json's "tracking"), or
    tracking off. Without mlflow installed the verb still works, with one warning."""
    record = info.get("tracking")
    if not isinstance(record, dict) or record.get("backend") != "mlflow" or not record.get("run_id") or not is_rank_zero():
        return Tracker()
    try:
        tracker = MlflowTracker(reporter)
        tracker.reopen(record)
    except ConfigError:
        if reporter:
            reporter.warn(f"This run is tracked in MLflow, but mlflow is not installed: not logged there ({INSTALL}).")
        return Tracker()
    except Exception as e:  # noqa: BLE001
        if reporter:
            reporter.warn(f"Cannot reach the run's MLflow store {record.get('tracking_uri')} ({type(e).__name__}): not logged there.")
        return Tracker()
    return tracker
