"""medclassify: a folder of labelled medical images in, a trustworthy, explained, deployable classifier out.

From Python or a notebook:

    import medclassify
    report = medclassify.audit("data/")                     # duplicates, leakage, counts
    result = medclassify.train("data/", "runs/a", model="seed_cnn", epochs=2)
    metrics = result.run.evaluate()                          # table + confusion matrix + ROC inline
    result.run.explain("data/x.png", method="gradcam")      # heatmap inline
    preds = medclassify.predict("runs/a", "new_images/")    # .to_pandas() for a DataFrame

Each function's help (`help(medclassify.train)`, Shift-Tab in Jupyter) lists its settings.
"""

from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:  # what editors and type checkers see; at run time the names load on first use
    from .api import (RunHandle, UnknownOptionError, audit, compare, evaluate, explain, load_run, predict, report,  # noqa: F401
                      train)

_API = ("train", "evaluate", "predict", "load_run", "audit", "compare", "explain", "report", "RunHandle",
        "UnknownOptionError")


def __getattr__(name: str):
    # Loaded on first use, so `medclassify --help` and `from medclassify import __version__` stay
    # free of torch imports.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'medclassify' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
