# The readers of other dataset layouts register themselves with sources.scan_folder on import.
from . import cnmc, compose, medmnist  # noqa: F401
