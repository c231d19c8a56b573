import pytest

from medclassify.training.schedule import lr_multiplier


def test_warmup_then_cosine_by_steps():
    assert lr_multiplier(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_multiplier(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(55, 100, 10, "cosine") == pytest.approx(0.505, abs=1e-3)
    assert lr_multiplier(100, 100, 10, "cosine") == pytest.approx(0.01)
    assert lr_multiplier(70, 100, 10, "step") == pytest.approx(0.1)
    assert lr_multiplier(70, 100, 10, "constant") == 1.0


def test_time_budget_drives_the_decay():
    # Half the budget spent after only a tenth of the (capped) steps: the schedule follows the clock.
    assert lr_multiplier(19, 100, 10, "cosine", time_progress=0.5) == pytest.approx(0.505, abs=1e-3)
    # The step count wins when it is further along (the epoch cap ends the run before the budget).
    assert lr_multiplier(100, 100, 10, "cosine", time_progress=0.2) == pytest.approx(0.01)
    # Past the budget the rate stays at its floor; warm-up is untouched by the clock.
    assert lr_multiplier(50, 1000, 10, "cosine", time_progress=1.7) == pytest.approx(0.01)
    assert lr_multiplier(4, 1000, 10, "cosine", time_progress=0.9) == pytest.approx(0.5)
