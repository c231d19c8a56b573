import csv
import json
import shutil

import numpy as np
import pytest

from medclassify.cli import main
from medclassify.inference.export import PARITY_TOLERANCE, export_onnx
from medclassify.inference.predictor import Predictor
from medclassify.run import load_run


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("exp") / "run"
    shutil.copytree(tiny_run, run_dir)
    assert main(["export", str(run_dir), "--format", "onnx", "-q"]) == 0
    return run_dir


def test_export_stores_onnx_with_parity_in_the_run(exported_run):
    meta = json.loads((exported_run / "export.json").read_text())
    assert (exported_run / "model.onnx").is_file()
    assert meta["opset"] == 17 and meta["parity"]["images"] > 0
    assert meta["parity"]["max_abs_probability_diff"] <= PARITY_TOLERANCE
    assert not list(exported_run.glob(".model.onnx.partial*"))


def test_onnx_has_a_dynamic_batch_and_matches_pytorch(exported_run):
    onnx_pred = Predictor(exported_run)
    torch_pred = Predictor(exported_run, backend="torch")
    assert onnx_pred.backend == "onnx" and torch_pred.backend == "torch"
    paths = [r.path for r in load_run(exported_run).records("test")]
    for n in (1, 5, len(paths)):
        batch = np.stack([torch_pred.load(p) for p in paths[:n]])
        diff = np.abs(onnx_pred.probabilities(batch) - torch_pred.probabilities(batch)).max()
        assert diff <= PARITY_TOLERANCE


def test_stale_export_is_ignored_after_retraining(exported_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported_run, run_dir)
    meta = json.loads((run_dir / "export.json").read_text())
    meta["weights_version"] = "000000000000"
    (run_dir / "export.json").write_text(json.dumps(meta))
    assert Predictor(run_dir).backend == "torch"


def test_export_of_a_non_run_and_an_unknown_format_are_one_line_errors(tmp_path, exported_run, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert main(["export", str(exported_run), "--format", "tflite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err)


def test_export_fails_cleanly_without_real_images(tiny_run, tmp_path):
    from medclassify.errors import RunError

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    with pytest.raises(RunError, match="parity"):
        export_onnx(run_dir, images=[])
    assert not (run_dir / "model.onnx").exists() and not (run_dir / "export.json").exists()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_cli_patients_tta_and_csv_input(exported_run, small_dataset, tmp_path):
    out = tmp_path / "preds.csv"
    pattern = r"person(?P<patient>\d+)_"
    assert main(["predict", str(exported_run), str(small_dataset / "test"), "--out", str(out), "-q",
                 "--patient-pattern", pattern, "--patient-agg", "max", "--tta"]) == 0
    rows = _rows(out)
    assert len(rows) == 12 and {"abstain", "error", "prob_lesion"} <= set(rows[0])
    patients = _rows(tmp_path / "preds-patients.csv")
    assert len(patients) == 12  # one image per patient in the generated data
    by_image = {r["path"].split("person")[1].split("_")[0]: float(r["prob_lesion"]) for r in rows}
    for p in patients:
        assert float(p["prob_lesion"]) == pytest.approx(by_image[p["patient"]], abs=1e-6)
    listing = tmp_path / "list.csv"
    listing.write_text("path,note\n" + "".join(f"{r['path']},x\n" for r in rows[:5]))
    assert main(["predict", str(exported_run), str(listing), "--out", str(tmp_path / "p2.csv"), "-q", "--tta"]) == 0
    again = {r["path"]: r["prob_lesion"] for r in _rows(tmp_path / "p2.csv")}
    assert again == {r["path"]: r["prob_lesion"] for r in rows[:5]}


def test_predict_cli_shards_cover_the_job_once(tiny_run, small_dataset, tmp_path):
    seen = []
    for i in (1, 2, 3):
        out = tmp_path / f"part{i}.csv"
        assert main(["predict", str(tiny_run), str(small_dataset), "--out", str(out), "-q", "--shard", f"{i}/3"]) == 0
        seen += [r["path"] for r in _rows(out)]
    assert len(seen) == len(set(seen)) == 60
    assert main(["predict", str(tiny_run), str(small_dataset), "--shard", "4/3", "-q"]) == 2
