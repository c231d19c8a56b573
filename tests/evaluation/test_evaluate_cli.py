"""The evaluate/report/compare commands end to end on a tiny run, and their one-line errors."""

import json


from medclassify.cli import main


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1, err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_evaluate_with_threshold_ordinal_and_cis(run_copy, capsys):
    assert main(["evaluate", str(run_copy), "--target-sensitivity", "0.9", "--ordinal", "--order", "lesion,normal", "-q"]) == 0
    out = capsys.readouterr().out
    assert "95% CI" in out and "operating threshold" in out and "qwk" in out
    saved = json.loads((run_copy / "metrics" / "test.json").read_text())
    assert saved["operating_point"]["target"] == {"sensitivity": 0.9}
    assert saved["operating_point"]["val"]["sensitivity"] >= 0.9
    lo, hi = saved["ci"]["accuracy"]
    assert lo <= saved["accuracy"] <= hi
    assert "qwk" in saved and "ece" in saved and "logits" in saved["predictions"]
    info = json.loads((run_copy / "run.json").read_text())
    assert info["operating_point"]["threshold"] == saved["operating_point"]["threshold"]


def test_bad_input_gives_one_line_errors(run_copy, capsys, tmp_path):
    assert "no 'val2' split" in _one_line_error(capsys, ["evaluate", str(run_copy), "--split", "val2"])
    assert "exactly one of" in _one_line_error(capsys, ["evaluate", str(run_copy), "--target-sensitivity", "0.9",
                                                        "--target-specificity", "0.9"])
    assert "must list each class" in _one_line_error(capsys, ["evaluate", str(run_copy), "--order", "a,b"])
    assert "does not exist" in _one_line_error(capsys, ["report", str(tmp_path / "nope")])
    # a run without a test split
    rows = (run_copy / "split.csv").read_text().replace(",test,", ",train,")
    (run_copy / "split.csv").write_text(rows)
    (run_copy / "metrics" / "test.json").unlink(missing_ok=True)
    assert "no 'test' split" in _one_line_error(capsys, ["report", str(run_copy)])
    # a run written by a newer medclassify
    info = json.loads((run_copy / "run.json").read_text())
    info["format_version"] = 99
    (run_copy / "run.json").write_text(json.dumps(info))
    for argv in (["evaluate", str(run_copy)], ["report", str(run_copy)], ["compare", str(run_copy), str(run_copy)]):
        assert "newer than this medclassify" in _one_line_error(capsys, argv)
