"""One TrainConfig, every entry point: train's options are generated from its fields, a config file
sits between the defaults and the flags, durations need a unit, an explicit epoch count is exact,
and the same seed gives the same weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from medclassify.cli import _CONFIG_FLAGS, main, resolve_train_config
from medclassify.config import DEFAULT_MAX_EPOCHS, PredictOptions, TrainConfig, recipe_epochs
from medclassify.errors import ConfigError


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "medclassify"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medclassify.cli"]


def test_help_lists_every_field_with_its_default():
    env = {**os.environ, "COLUMNS": "400", "TERMINAL_WIDTH": "400"}
    out = subprocess.run([*cli_command(), "train", "--help"], capture_output=True, text=True, env=env, timeout=120).stdout
    lines = out.splitlines()
    for name, field in TrainConfig.model_fields.items():
        if name in ("data", "out"):
            continue
        flag = _CONFIG_FLAGS.get(name, "--" + name.replace("_", "-"))
        line = next((x for x in lines if x.lstrip("│ *").startswith(f"{flag} ")), None)
        assert line is not None, f"{flag} missing from train --help"
        default = field.default
        if isinstance(default, bool):
            assert f"--no-{name.replace('_', '-')}" in line and "[default: no-" in line, line
        elif default is not None:
            assert f"[default: {default}]" in line, line
    assert "[default: off]" in next(x for x in lines if x.lstrip("│ ").startswith("--time-budget "))
    for extra in ("--config", "--set", "--resume", "--overwrite", "--folds", "--quiet"):
        assert any(x.lstrip("│ ").startswith(f"{extra} ") for x in lines), extra


def test_time_budget_needs_a_unit(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--time-budget", "15"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "15m" in err[0] and "15s" in err[0]
    assert TrainConfig(data="d", out="o", time_budget="15m").time_budget == 900
    assert TrainConfig(data="d", out="o", time_budget="off").time_budget is None


def test_explicit_epochs_means_no_budget_everywhere():
    c = TrainConfig(data="d", out="o", epochs=2)
    assert (c.epochs, c.time_budget) == (2, None)
    bare = TrainConfig(data="d", out="o")
    assert (bare.epochs, bare.time_budget) == (recipe_epochs(bare.model), None)
    budget = TrainConfig(data="d", out="o", time_budget="5m")
    assert (budget.epochs, budget.time_budget) == (DEFAULT_MAX_EPOCHS, 300)
    both = TrainConfig(data="d", out="o", epochs=4, time_budget="5m")
    assert (both.epochs, both.time_budget) == (4, 300)
    with pytest.raises(ValueError):
        TrainConfig(data="d", out="o", epoch=1)  # a misspelt setting is refused, not ignored


def test_precedence_defaults_file_flags_set(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 3, "lr": 0.005, "dedupe": True, "weight_decay": 0.05, "time_budget": "2m"}))
    values = {"seed": 7, "dedupe": False, "lr": None, "channels": "1"}
    c = resolve_train_config(Path("d"), Path("o"), values, {"seed", "dedupe", "channels"}, cfg, ["weight_decay=0.1"])
    assert (c.seed, c.dedupe, c.lr, c.weight_decay, c.channels) == (7, False, 0.005, 0.1, 1)
    assert c.time_budget == 120 and c.batch_size == 32
    with pytest.raises(ConfigError, match="given twice"):
        resolve_train_config(Path("d"), Path("o"), values, {"seed"}, None, ["seed=1"])


def test_config_file_unknown_key_names_the_nearest(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("weight_decy: 0.1\n")
    with pytest.raises(ConfigError, match="weight_decay"):
        resolve_train_config(Path("d"), Path("o"), {}, set(), cfg, [])
    cfg.write_text("time_budget: 15\n")
    with pytest.raises(ConfigError, match="15m"):
        resolve_train_config(Path("d"), Path("o"), {}, set(), cfg, [])
    cfg.write_text("time_budget: off\n")  # YAML reads off as false
    assert resolve_train_config(Path("d"), Path("o"), {}, set(), cfg, []).time_budget is None


def test_budgeted_config_yaml_reads_back(tmp_path):
    from medclassify.training.fit import write_config_yaml

    config = TrainConfig(data="d", out="o", time_budget="90s", seed=4)
    write_config_yaml(tmp_path / "config.yaml", config)
    assert resolve_train_config(Path("d"), Path("o"), {}, set(), tmp_path / "config.yaml", []) == config


def test_bool_flags_parse(tmp_path, monkeypatch):
    seen = {}

    def fake(config, **kw):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("medclassify.training.fit.train", fake)
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--dedupe", "--no-strict", "--ema",
              "--weight-decay", "0.02", "--warmup-epochs", "1", "--drop-rate", "0.3", "--workers", "1", "--select", "average"])
    c = seen["config"]
    assert (c.dedupe, c.strict, c.ema, c.weight_decay, c.warmup_epochs, c.drop_rate, c.workers, c.select) == \
        (True, False, True, 0.02, 1.0, 0.3, 1, "average")


def test_predict_options_defaults_written_once():
    from medclassify.inference.predictor import DEFAULT_ABSTAIN_BELOW

    assert PredictOptions().abstain_below == DEFAULT_ABSTAIN_BELOW
    with pytest.raises(ValueError):
        PredictOptions(backend="tensorrt")


def _tiny_train(data: Path, out: Path, select: str = "last", epochs: int = 2) -> Path:
    from medclassify.reporting import Reporter
    from medclassify.training.fit import train

    config = TrainConfig(data=str(data), out=str(out), model="seed_cnn", pretrained="none", image_size=32, epochs=epochs,
                         batch_size=8, threads=1, workers=1, precision="fp32", seed=5, select=select, average_epochs=2)
    return train(config, reporter=Reporter(quiet=True)).run_dir


def test_same_seed_same_weights_and_provenance(small_dataset, tmp_path):
    import json

    a, b = _tiny_train(small_dataset, tmp_path / "a"), _tiny_train(small_dataset, tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    info = json.loads((a / "run.json").read_text())
    assert info["epochs_run"] == 2 and info["selection"] == {"select": "last", "epoch": 2, "epochs": [2]}
    for name in ("torch", "torchvision", "timm", "numpy", "medclassify", "device"):
        assert info["environment"][name], name
    assert info["data_fingerprint"] == json.loads((b / "run.json").read_text())["data_fingerprint"]
    read_back = resolve_train_config(Path(info["config"]["data"]), a, {}, set(), a / "config.yaml", [])
    assert read_back == TrainConfig(**info["config"])


def test_average_selection_differs_from_last(small_dataset, tmp_path):
    import json

    run = _tiny_train(small_dataset, tmp_path / "avg", select="average", epochs=4)
    assert json.loads((run / "run.json").read_text())["selection"]["epochs"] == [3, 4]
    avg, last = load_file(str(run / "model.safetensors")), load_file(str(run / "last.safetensors"))
    assert any(float((avg[k].double() - last[k].double()).abs().max()) > 0 for k in avg if avg[k].is_floating_point())


def test_best_selection_ships_the_best_epoch(small_dataset, tmp_path):
    import json

    from safetensors import safe_open

    run = _tiny_train(small_dataset, tmp_path / "best", select="best")
    info = json.loads((run / "run.json").read_text())
    assert info["selection"]["select"] == "best" and info["selection"]["epoch"] == info["best_epoch"]
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == str(info["best_epoch"])


def test_last_epochs_average_round_trips_through_a_checkpoint():
    import torch

    from medclassify.training.callbacks import LastEpochsAverage

    model = torch.nn.Linear(2, 2)
    avg = LastEpochsAverage(2)
    for epoch, value in ((1, 5.0), (2, 1.0), (3, 3.0)):  # planned 3 epochs: only 2 and 3 count
        with torch.no_grad():
            model.weight.fill_(value)
        avg.collect(model, epoch, planned=3)
        if epoch == 2:  # a checkpoint after epoch 2, restored into a fresh average
            restored = LastEpochsAverage(2)
            restored.load(avg.tensors(), avg.state())
    restored.collect(model, 3, planned=3)
    for a in (avg, restored):
        assert a.epochs == [2, 3]
        assert torch.equal(a.apply(model).weight, torch.full((2, 2), 2.0))
