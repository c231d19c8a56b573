"""What the server serves: one run or a cascade, behind one interface that answers with plain
JSON-ready dicts (prediction, model card) and heatmap PNGs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..cascade import Cascade
from ..config import PredictOptions
from ..data.formats import UnreadableImage
from ..data.images import decode
from ..explain import GradCAM
from ..explain.overlay import overlay_on_original
from ..inference.predictor import Predictor
from .uploads import Upload

INTENDED_USE = ("Research and education only. Not a medical device and not a diagnosis: every output must be "
                "reviewed by a qualified clinician. Valid only for images like the training data "
                "(modality, view, population).")


class ExplainUnavailable(Exception):
    """Grad-CAM is not installed in this medclassify (the explain package has not landed)."""


def explain_available() -> bool:
    return True  # the explain layer ships with the package; kept for the clients that ask


def _metric_summary(metrics: dict | None) -> dict | None:
    """Headline metrics with their confidence intervals when the evaluation stored them."""
    if not metrics:
        return None
    keep = ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity")
    out = {k: metrics[k] for k in keep if k in metrics}
    for key in ("ci", "confidence_intervals", "bootstrap"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def decode_upload(predictor: Predictor, upload: Upload) -> np.ndarray:
    """The upload as the model sees it. Whatever the decoder raises on these bytes (a DICOM tag that is
    not a number, a codec error) is a fault of the file, so it becomes UnreadableImage (a 422)."""
    try:
        return predictor.load(upload.path, upload.data)
    except (UnreadableImage, MemoryError):
        raise
    except Exception as e:
        raise UnreadableImage(upload.filename, f"cannot decode ({type(e).__name__}: {str(e)[:200]})") from None


def _folder_name(root: str | None) -> str | None:
    """The training data's folder name only: the model card must not disclose the server's paths."""
    return Path(str(root).rstrip("/\\")).name or None if root else None


class ServedModel:
    def __init__(self, target: str | Path, options: PredictOptions | None = None):
        options = options or PredictOptions()
        target = Path(target)
        self.target = target
        if target.suffix.lower() in (".yaml", ".yml"):
            self.cascade: Cascade | None = Cascade(target, options)
            self.predictor = None
            self.classes = self.cascade.labels
            self.version = self.cascade.version
        else:
            self.cascade = None
            self.predictor = Predictor(target, options=options)
            self.classes = self.predictor.classes
            self.version = self.predictor.version
        self.can_explain = explain_available()

    @property
    def kind(self) -> str:
        return "cascade" if self.cascade else "run"

    def info(self) -> dict[str, Any]:
        base = {"kind": self.kind, "classes": self.classes, "version": self.version, "intended_use": INTENDED_USE,
                "explain": self.can_explain}
        if self.predictor is not None:
            run = self.predictor.run
            base.update({"name": run.path.name, "model": run.model_name, "backend": self.predictor.backend,
                         "image_size": self.predictor.prep.image_size, "abstain_below": self.predictor.abstain_below,
                         "ood": self.predictor.guard_info(),
                         "operating_point": self.predictor.operating_point,
                         "trained_on": _folder_name(run.info.get("data", {}).get("root")), "created": run.info.get("created"),
                         "metrics": {s: _metric_summary(run.metrics(s)) for s in ("test", "val") if run.metrics(s)},
                         "intended_use": run.info.get("intended_use", INTENDED_USE)})
        else:
            base.update({"name": self.target.stem, "start": self.cascade.spec.start,
                         "stages": {n: {"classes": p.classes, "model": p.run.model_name, "backend": p.backend,
                                        "version": p.version, "route": self.cascade.spec.stages[n].route,
                                        "metrics": {s: _metric_summary(p.run.metrics(s)) for s in ("test", "val") if p.run.metrics(s)}}
                                    for n, p in self.cascade.predictors.items()}})
            saved = self.target.with_suffix(".metrics.json")
            if saved.is_file():
                import json

                base["metrics"] = {"end_to_end": _metric_summary(json.loads(saved.read_text()))}
        return base

    def _predict_one(self, predictor: Predictor, upload: Upload, decoded: dict):
        key = (predictor.prep.image_size, predictor.prep.resize, predictor.prep.channels)
        if key not in decoded:
            decoded[key] = decode_upload(predictor, upload)
        return predictor.predict_decoded(decoded[key], str(upload.path))

    def predict(self, upload: Upload) -> dict[str, Any]:
        """Raises UnreadableImage when the decoder refuses the image."""
        decoded: dict = {}  # one decode per preprocessing, shared by a cascade's stages
        if self.predictor is not None:
            pred = self._predict_one(self.predictor, upload, decoded)
            return {"label": pred.label, "probability": pred.probabilities[pred.label], "probabilities": pred.probabilities,
                    "abstain": pred.abstain, "abstain_reason": pred.abstain_reason, "ood_score": pred.ood_score,
                    "in_distribution": pred.in_distribution, "cascade_path": None}
        res = self.cascade._result(str(upload.path), lambda stage: self._predict_one(self.cascade.predictors[stage], upload, decoded))
        last = res.steps[-1]
        return {"label": res.label, "probability": res.probability, "probabilities": last.probabilities,
                "abstain": res.abstain, "abstain_reason": res.abstain_reason, "ood_score": res.ood_score,
                "in_distribution": res.in_distribution,
                "cascade_path": [{"stage": s.stage, "label": s.label, "probability": s.probability,
                                  "probabilities": s.probabilities, "version": s.version, "ood_score": s.ood_score,
                                  "in_distribution": s.in_distribution} for s in res.steps]}

    def explain_png(self, upload: Upload) -> tuple[bytes, str, float, bool]:
        """Grad-CAM of the predicted class (for a cascade: of its last stage) drawn over the uploaded image
        at its own resolution (the page scales it like the preview); returns (PNG bytes, class,
        probability, localised): `localised` is False for a flat map, which would otherwise be a silent
        copy of the image."""
        if not self.can_explain:
            raise ExplainUnavailable()
        predictor = self.predictor
        if predictor is None:
            last = self.cascade.predict_file(upload.path, upload.data).steps[-1].stage
            predictor = self.cascade.predictors[last]
        image = decode_upload(predictor, upload)
        probs = predictor.probabilities(image[None])[0]
        target = int(np.argmax(probs))
        expl = GradCAM.for_run(predictor.run, predictor=predictor).explain(image, target)
        original = decode(upload.path, data=upload.data)
        buf = io.BytesIO()
        Image.fromarray(overlay_on_original(original, expl, predictor.prep.resize)).save(buf, format="PNG")
        return buf.getvalue(), predictor.classes[target], float(probs[target]), not expl.flat
