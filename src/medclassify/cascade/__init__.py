"""Model cascades (see spec.py for the YAML file): spec, runtime (routing through the stages'
Predictors), train (train-cascade) and evaluate (evaluate-cascade)."""

from .evaluate import cascade_metrics_path, cascade_summary, evaluate_cascade, save_cascade_metrics
from .runtime import Cascade, CascadeResult, CascadeStep
from .spec import CascadeSpec, Stage, read_cascade, stage_relabel
from .train import check_training_spec, train_cascade

__all__ = ["Cascade", "CascadeResult", "CascadeSpec", "CascadeStep", "Stage", "cascade_metrics_path", "cascade_summary",
           "check_training_spec", "evaluate_cascade", "read_cascade", "save_cascade_metrics", "stage_relabel",
           "train_cascade"]
