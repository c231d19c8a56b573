"""CLI commands of each area (audit, explain, serve, ...), one module each. Every module here
registers its commands on `medclassify.cli.app` when imported; cli.py imports them all."""

import importlib
import pkgutil


def register_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
