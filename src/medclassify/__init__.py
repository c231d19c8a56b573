"""medclassify: a folder of labelled medical images in, a trustworthy, explained, deployable classifier out."""

from .version import __version__


def train(*args, **kwargs):
    from .training.fit import train as _train

    return _train(*args, **kwargs)


def evaluate(*args, **kwargs):
    from .evaluation.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def load_run(path):
    from .run import load_run as _load_run

    return _load_run(path)


def predict(*args, **kwargs):
    from .inference.predictor import predict_files

    return predict_files(*args, **kwargs)


__all__ = ["__version__", "train", "evaluate", "load_run", "predict"]
