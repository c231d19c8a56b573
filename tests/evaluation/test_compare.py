import shutil

import numpy as np
import pytest
from scipy.stats import binom, norm
from sklearn.metrics import roc_auc_score

from medclassify.errors import RunError
from medclassify.evaluation.compare import compare_runs, delong, mcnemar_midp, write_compare_html


def _slow_delong(y, a, b):
    """DeLong et al. 1988 written out with the O(n_pos * n_neg) kernel matrix."""
    y = np.asarray(y).astype(bool)
    out = []
    for s in (a, b):
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        out.append((psi.mean(), psi.mean(1), psi.mean(0)))
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.array([o[1] for o in out]))
    s01 = np.cov(np.array([o[2] for o in out]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (out[0][0] - out[1][0]) / np.sqrt(var)
    return out[0][0], out[1][0], 2 * norm.sf(abs(z))


def test_fast_delong_equals_the_textbook_version_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(150) < 0.4
    a = np.round(rng.normal(1.0 * y, 1), 1)
    b = np.round(0.5 * a + rng.normal(0.7 * y, 1), 1)
    fast = delong(y, a, b)
    auc_a, auc_b, p = _slow_delong(y, a, b)
    assert fast["auc_a"] == pytest.approx(roc_auc_score(y, a)) == pytest.approx(auc_a)
    assert fast["auc_b"] == pytest.approx(auc_b)
    assert fast["p_value"] == pytest.approx(p)


def test_delong_detects_a_real_difference_and_not_an_absent_one():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.5
    good, bad = rng.normal(2.0 * y, 1), rng.normal(0.3 * y, 1)
    assert delong(y, good, bad)["p_value"] < 1e-6
    assert delong(y, good, good)["p_value"] == 1.0


def test_mcnemar_mid_p():
    a = np.array([1] * 10 + [0] * 3 + [1] * 20, bool)
    b = np.array([0] * 10 + [1] * 3 + [1] * 20, bool)
    res = mcnemar_midp(a, b)
    assert (res["a_only"], res["b_only"]) == (10, 3)
    assert res["p_value"] == pytest.approx(2 * binom.cdf(3, 13, 0.5) - binom.pmf(3, 13, 0.5))
    assert mcnemar_midp(a, a)["p_value"] == 1.0


def test_compare_two_runs_on_the_same_test_set(tiny_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    result = compare_runs([tiny_run, other])
    assert [r["run"] for r in result["leaderboard"]] == [tiny_run.name, "other"]
    pair = result["pairs"][0]
    assert pair["mcnemar"]["a_only"] == pair["mcnemar"]["b_only"] == 0
    assert set(pair["delong"]) == {"normal"}
    assert "accuracy" in result["leaderboard"][0]["ci"]
    page = write_compare_html(result, tmp_path / "cmp.html").read_text()
    assert "McNemar" in page and tiny_run.name in page
    assert "<th>Balanced accuracy</th>" in page and "balanced_accuracy" not in page  # readable headers
    assert 'alt="ROC curves of the compared runs" src="data:image/png;base64,' in page
    assert "p = 0.0000" not in page
    assert "configured identically" in page  # a plain copy differs in nothing
    # each run's warnings (the tiny test split is always too small) are repeated atop the comparison
    assert result["leaderboard"][0]["warnings"] and 'id="warnings"' in page.split('id="leaderboard"')[0]


def test_compare_page_lists_configuration_differences(tiny_run, tmp_path):
    import json

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    info = json.loads((other / "run.json").read_text())
    info["config"]["lr"] = 0.123
    info["config"]["weights"] = "/w/start.safetensors"
    (other / "run.json").write_text(json.dumps(info))
    result = compare_runs([tiny_run, other])
    rows = {row[0]: row[1:] for row in result["differences"]}
    assert rows["lr"][1] == "0.123" and rows["start weights"][1] == "file start.safetensors"
    page = write_compare_html(result, tmp_path / "cmp.html").read_text()
    assert 'id="differences"' in page and "file start.safetensors" in page


def test_compare_refuses_runs_on_different_test_images(tiny_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    rows = (other / "split.csv").read_text().splitlines()
    test_rows = [i for i, r in enumerate(rows) if ",test," in r]
    rows[test_rows[0]] = rows[test_rows[0]].replace(",test,", ",train,")
    (other / "split.csv").write_text("\n".join(rows) + "\n")
    for f in (other / "metrics").glob("test.json"):
        f.unlink()
    with pytest.raises(RunError, match="different images"):
        compare_runs([tiny_run, other])
    with pytest.raises(RunError, match="at least two"):
        compare_runs([tiny_run])
