"""The package version, in a base module every layer may import."""

__version__ = "0.1.0"
