"""Export is a transaction: the earlier verified model.onnx + export.json stay until a new export has
passed its parity check, and a model without a passed, matching parity record is never used."""

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from medclassify.cli import main
from medclassify.errors import ConfigError
from medclassify.inference.export import export_onnx
from medclassify.inference.predictor import Predictor
from medclassify.io import PARTIAL
from medclassify.run import load_run


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tx") / "run"
    shutil.copytree(tiny_run, run_dir)
    export_onnx(run_dir)
    return run_dir


@pytest.fixture
def run_dir(exported, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(exported, dest)
    return dest


def _digest(run_dir: Path) -> dict:
    return {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest() for name in ("model.onnx", "export.json")}


def _probabilities(run_dir: Path, backend: str = "auto") -> tuple[str, np.ndarray]:
    pred = Predictor(run_dir, backend=backend)
    paths = [r.path for r in load_run(run_dir).records("test")][:6]
    return pred.backend, pred.probabilities(np.stack([pred.load(p) for p in paths]))


def test_export_json_vouches_for_the_file(exported):
    meta = json.loads((exported / "export.json").read_text())
    assert meta["parity"]["status"] == "passed"
    assert meta["sha256"] == hashlib.sha256((exported / "model.onnx").read_bytes()).hexdigest()


# The child stops (as a slow export would) right after it has written the new model under its
# temporary name, or right after that model passed its parity check (where an export used to leave
# an unverified model.onnx with a stub export.json); the test kills it there, whatever the speed.
_SLOW_EXPORT = textwrap.dedent("""
    import sys, time, torch
    from medclassify.inference import export
    def stop_after(module, name):
        real = getattr(module, name)
        def slow(*args, **kwargs):
            out = real(*args, **kwargs)
            print("written", flush=True)
            time.sleep(120)
            return out
        setattr(module, name, slow)
    stop_after(torch.onnx, "export") if sys.argv[2] == "export" else stop_after(export, "file_sha256")
    from medclassify.cli import main
    sys.exit(main(["export", sys.argv[1], "-q"]))
""")


@pytest.mark.parametrize("stop", ["export", "parity_passed"])
def test_sigkill_while_model_onnx_is_written_keeps_the_verified_pair(run_dir, stop):
    before = _digest(run_dir)
    backend, p_before = _probabilities(run_dir)
    assert backend == "onnx"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, str(run_dir), stop], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not list(run_dir.glob(f".model.onnx{PARTIAL}*")):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.02)
        assert child.stdout.readline().strip() == b"written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert _digest(run_dir) == before  # byte-identical
    backend, p_after = _probabilities(run_dir)
    assert backend == "onnx" and np.array_equal(p_before, p_after)  # and it is the model in use
    stale = list(run_dir.glob(f".model.onnx{PARTIAL}*"))
    assert stale  # the killed export's temporary, until the next export into the run
    assert main(["export", str(run_dir), "-q"]) == 0
    assert not list(run_dir.glob(f".*{PARTIAL}*"))


def test_reexport_with_the_dataset_moved_leaves_the_old_pair(run_dir, capsys):
    before = _digest(run_dir)
    split = run_dir / "split.csv"
    with open(split, newline="") as f:
        rows = list(csv.reader(f))
    with open(split, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *([str(Path("/moved-away") / r[0].lstrip("/")), *r[1:]] for r in rows[1:])])
    assert not any(Path(r.path).is_file() for r in load_run(run_dir).records())
    assert main(["export", str(run_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "parity" in err[0]
    assert _digest(run_dir) == before and not list(run_dir.glob(f".*{PARTIAL}*"))
    assert Predictor(run_dir).backend == "onnx"


def test_failed_parity_leaves_the_old_pair(run_dir, monkeypatch):
    from medclassify.errors import RunError
    from medclassify.inference import export

    before = _digest(run_dir)
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no model can pass
    with pytest.raises(RunError, match="not kept"):
        export_onnx(run_dir)
    assert _digest(run_dir) == before and not list(run_dir.glob(f".*{PARTIAL}*"))


@pytest.mark.parametrize("damage", ["changed_file", "stub_export_json", "failed_parity", "no_export_json"])
def test_an_unverified_model_is_never_used(run_dir, damage):
    meta_path = run_dir / "export.json"
    meta = json.loads(meta_path.read_text())
    if damage == "changed_file":
        with open(run_dir / "model.onnx", "ab") as f:
            f.write(b"\0")
    elif damage == "stub_export_json":  # what an export killed at the wrong moment used to leave
        meta_path.write_text(json.dumps({"weights_version": meta["weights_version"]}))
    elif damage == "failed_parity":
        meta["parity"]["status"] = "failed"
        meta_path.write_text(json.dumps(meta))
    else:
        meta_path.unlink()
    assert Predictor(run_dir).backend == "torch"
    with pytest.raises(ConfigError, match="export it first"):
        Predictor(run_dir, backend="onnx")


def test_int8_is_a_transaction_too(run_dir):
    from medclassify.errors import RunError
    from medclassify.inference.quantize import INT8_FILE, quantize_int8

    quantize_int8(run_dir, max_drop=1.0, calibration=16, check=16)
    int8 = run_dir / INT8_FILE
    before = {**_digest(run_dir), INT8_FILE: hashlib.sha256(int8.read_bytes()).hexdigest()}
    with pytest.raises(RunError, match="not kept"):
        quantize_int8(run_dir, max_drop=-1.0, calibration=16, check=16)  # a limit no model meets: the earlier int8 model stays
    assert {**_digest(run_dir), INT8_FILE: hashlib.sha256(int8.read_bytes()).hexdigest()} == before
    assert not list(run_dir.glob(f".*{PARTIAL}*"))
    assert Predictor(run_dir, backend="onnx-int8").backend == "onnx-int8"
    assert main(["export", str(run_dir), "-q"]) == 0  # a re-export of the same weights keeps the int8 record
    assert Predictor(run_dir, backend="onnx-int8").backend == "onnx-int8"
    with open(int8, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="int8"):
        Predictor(run_dir, backend="onnx-int8")
