import numpy as np
import pytest

from medclassify.errors import ConfigError
from medclassify.evaluation.threshold import choose_threshold, operating_point


def _scores(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    return y, 1 / (1 + np.exp(-rng.normal(1.5 * y - 0.5, 1.0)))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_target_is_met_with_the_best_specificity(target):
    y, p = _scores()
    t = choose_threshold(y, p, target_sensitivity=target)
    op = operating_point(y, p, t)
    assert op["sensitivity"] >= target
    # the next higher score as threshold would miss the target: no better specificity was possible
    chosen = p[p >= t].min()
    if (p > chosen).any():
        assert operating_point(y, p, p[p > chosen].min())["sensitivity"] < target


def test_specificity_target_is_met():
    y, p = _scores(1)
    t = choose_threshold(y, p, target_specificity=0.9)
    assert operating_point(y, p, t)["specificity"] >= 0.9
    assert operating_point(y, p, t)["tp"] + operating_point(y, p, t)["fn"] == y.sum()


def test_bad_targets_are_one_line_config_errors():
    y, p = _scores()
    with pytest.raises(ConfigError):
        choose_threshold(y, p, target_sensitivity=1.5)
    with pytest.raises(ConfigError):
        choose_threshold(y, p, target_sensitivity=0.9, target_specificity=0.9)
    with pytest.raises(ConfigError):
        choose_threshold(np.ones(10), p[:10], target_sensitivity=0.9)
