"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations


class MedClassifyError(Exception):
    """A mistake in the user's input (path, data, flag). The CLI prints it as one line and exits 2."""

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)


class DataError(MedClassifyError):
    """The dataset (folder, CSV, image file) cannot be used as given."""


class ConfigError(MedClassifyError):
    """A flag or configuration value is invalid."""


class RunError(MedClassifyError):
    """A run directory is missing, incomplete or from an incompatible version."""
