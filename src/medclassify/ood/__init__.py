"""The out-of-distribution guard: detectors on the model's features (penultimate and earlier layers),
fitted at the end of training, that flag images unlike the training images (detector.py: the
detectors; guard.py: fitting, storing and loading a run's guard; twosample.py: the test behind the
shift check; estimate.py: accuracy on unlabelled images from the model's confidence, adapt's gate)."""

from .detector import METHODS, Detector
from .guard import DEFAULT_METHOD, DEFAULT_QUANTILE, GUARD_FILE, Guard, embed, fit_guard, load_guard

__all__ = ["METHODS", "Detector", "DEFAULT_METHOD", "DEFAULT_QUANTILE", "GUARD_FILE", "Guard", "embed", "fit_guard", "load_guard"]
