"""The out-of-distribution guard: a detector on the model's penultimate features, fitted at the end of
training, that flags images unlike the training images (detector.py: the detectors; guard.py: fitting,
storing and loading a run's guard; twosample.py: the test behind the shift check)."""

from .detector import METHODS, Detector
from .guard import DEFAULT_METHOD, DEFAULT_QUANTILE, GUARD_FILE, Guard, embed, fit_guard, load_guard

__all__ = ["METHODS", "Detector", "DEFAULT_METHOD", "DEFAULT_QUANTILE", "GUARD_FILE", "Guard", "embed", "fit_guard", "load_guard"]
