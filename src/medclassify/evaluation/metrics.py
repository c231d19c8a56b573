"""The classification metrics live in training/metrics.py (validation needs them); re-exported here."""

from ..training.metrics import compute_metrics, monitor_value, roc_auc  # noqa: F401
