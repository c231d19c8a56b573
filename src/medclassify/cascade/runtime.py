"""A loaded cascade routing each image through its stages' Predictors (the one forward pass)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..config import PredictOptions
from ..errors import MedClassifyError
from ..inference.predictor import Prediction, Predictor
from ..run import load_run
from .spec import CascadeSpec, _err, read_cascade

@dataclass
class CascadeStep:
    stage: str
    label: str
    probability: float
    probabilities: dict[str, float]
    version: str
    ood_score: float | None = None
    in_distribution: bool | None = None


@dataclass
class CascadeResult:
    path: str | None
    label: str | None
    probability: float  # product of the chosen probabilities along the path
    steps: list[CascadeStep]
    abstain: bool
    error: str | None = None
    # Out-of-distribution: the entry stage's score; in_distribution is False when any stage's guard
    # flags the image, None when no stage has a guard.
    ood_score: float | None = None
    in_distribution: bool | None = None
    abstain_reason: str | None = None


class Cascade:
    """A loaded cascade: one Predictor per stage, checked against the routes."""

    def __init__(self, spec: CascadeSpec | str | Path, options: PredictOptions | None = None):
        """`options`: the inference options every stage's Predictor uses (backend, TTA, abstain
        threshold, threads, batch size), the same object as `predict` and `serve`."""
        options = options or PredictOptions()
        self.spec = spec if isinstance(spec, CascadeSpec) else read_cascade(spec)
        self.predictors: dict[str, Predictor] = {}
        for s in self.spec.stages.values():
            try:
                run = load_run(s.run)
            except MedClassifyError:
                raise _err(self.spec.path, f"stage '{s.name}' run {s.run} does not exist or is not a run.",
                           f"train it (medclassify train-cascade {self.spec.path}) or fix the path.") from None
            unknown = sorted(set(s.route) - set(run.classes))
            if unknown:
                raise _err(self.spec.path, f"stage '{s.name}' routes class(es) {', '.join(unknown)} that run {s.run} "
                           f"does not have (it has: {', '.join(run.classes)}).", "fix the class names under route.")
            self.predictors[s.name] = Predictor(run, options=options)
        self.labels = self.spec.final_labels(lambda s: self.predictors[s.name].classes)

    def describe(self) -> dict:
        return {"cascade": str(self.spec.path), "start": self.spec.start, "labels": self.labels,
                "stages": {n: {**p.describe(), "route": self.spec.stages[n].route} for n, p in self.predictors.items()}}

    @property
    def version(self) -> str:
        return "+".join(p.version for p in self.predictors.values())

    def _result(self, path: str | None, per_stage: Callable[[str], Prediction]) -> CascadeResult:
        steps: list[CascadeStep] = []
        name, prob, abstain = self.spec.start, 1.0, False
        while True:
            pred = per_stage(name)
            if pred.error:
                return CascadeResult(path, None, 0.0, steps, False, pred.error)
            p = pred.probabilities[pred.label]
            steps.append(CascadeStep(name, pred.label, p, pred.probabilities, self.predictors[name].version,
                                     pred.ood_score, pred.in_distribution))
            prob *= p
            abstain = abstain or pred.abstain
            nxt = self.spec.stages[name].route.get(pred.label)
            if nxt is None:
                return self._finished(path, pred.label, prob, steps, abstain)
            name = nxt

    @staticmethod
    def _finished(path, label, prob, steps: list[CascadeStep], abstain: bool) -> CascadeResult:
        flags = [s.in_distribution for s in steps if s.in_distribution is not None]
        inside = None if not flags else all(flags)
        reason = "out_of_distribution" if inside is False else "low_confidence" if abstain else None
        return CascadeResult(path, label, prob, steps, reason is not None, ood_score=steps[0].ood_score,
                             in_distribution=inside, abstain_reason=reason)

    def predict_file(self, path: str | Path, data: bytes | None = None) -> CascadeResult:
        """Raises UnreadableImage like Predictor.predict_file (`data`: the file's bytes, held in memory)."""
        return self._result(str(path), lambda stage: self.predictors[stage].predict_file(path, data))

    def predict_paths(self, paths: Sequence[str], extra: dict[str, Sequence[str]] | None = None,
                      on_stage: Callable[[str, int], None] | None = None) -> tuple[list[CascadeResult], dict[str, dict[str, Prediction]]]:
        """Route a batch stage by stage. `extra[stage]` lists more paths to run that stage on (for
        per-stage accuracy); returns the results and every stage's predictions by path."""
        by_stage: dict[str, dict[str, Prediction]] = {n: {} for n in self.predictors}
        routed: dict[str, set[str]] = {n: set() for n in self.predictors}  # greedy routes through each stage
        routed[self.spec.start] = set(paths)
        for name in self._order():
            need = sorted((routed[name] | set((extra or {}).get(name, ()))) - set(by_stage[name]))
            if on_stage:
                on_stage(name, len(need))
            for pred in self.predictors[name].predict_paths(need):
                by_stage[name][pred.path] = pred
            for pth in routed[name]:
                pred = by_stage[name][pth]
                nxt = None if pred.error else self.spec.stages[name].route.get(pred.label)
                if nxt is not None:
                    routed[nxt].add(pth)
        results = [self._result(p, lambda stage, p=p: by_stage[stage][p]) for p in paths]
        return results, by_stage

    def _order(self) -> list[str]:
        """Stages in routing order (every stage after those that route to it)."""
        order, todo = [], [self.spec.start]
        while todo:
            n = todo.pop(0)
            if n in order:
                order.remove(n)
            order.append(n)
            todo += list(self.spec.stages[n].route.values())
        return order


