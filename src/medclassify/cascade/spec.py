"""Model cascades: several runs answering one after another, each routing an image to the next
stage by its predicted class (the brain-MRI app: disease? -> Alzheimer's or tumour? -> severity or
tumour type). A YAML file describes it; paths in it are relative to the file:

    data: brain_mri.yaml            # dataset spec (data/compose.py) whose classes are the final labels
    train: {model: efficientnet_lite0, image_size: 128, time_budget: 4m}   # every stage's training
    start: disease                  # default: the first stage
    stages:
      disease:
        run: runs/disease
        classes: {no_disease: no_disease, "*": disease}   # final label -> this stage's class
        route: {disease: kind}                            # stage class -> next stage
      kind:
        run: runs/kind
        classes: {mild: alzheimer, ..., glioma: tumor, ...}   # final labels not listed stay out
        route: {alzheimer: severity, tumor: tumor_type}
      severity:
        run: runs/severity
        classes: [very_mild, mild, moderate]              # a list: the labels themselves
        train: {time_budget: 3m}                          # per-stage overrides

A stage class that is not routed is a final label. `data`, `classes` and `train` are needed only
by train-cascade; predicting and serving need the runs and the routes.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.compose import read_yaml, resolve_path
from ..errors import ConfigError

@dataclass
class Stage:
    name: str
    run: Path
    classes: dict[str, str] | None  # final label -> stage class (None: not given)
    route: dict[str, str]
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class CascadeSpec:
    path: Path
    stages: dict[str, Stage]
    start: str
    data: Path | None
    train: dict[str, Any]

    def final_labels(self, stage_classes: Callable[[Stage], list[str]]) -> list[str]:
        labels: list[str] = []
        for s in self.stages.values():
            labels += [c for c in stage_classes(s) if c not in s.route and c not in labels]
        return labels


def _err(path: Path, msg: str, fix: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}", fix)


def _mapping(path: Path, name: str, value) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return {str(v): str(v) for v in value}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    raise _err(path, f"stage '{name}': classes must be a list or a mapping final_label: stage_class.",
               "write e.g. classes: {no_disease: no_disease, '*': disease}.")


def read_cascade(path: str | Path) -> CascadeSpec:
    """Parse and check the structure (stage names, routes, no loops); runs are not opened here."""
    path = Path(path)
    doc = read_yaml(path, "cascade")
    raw = doc.get("stages")
    if not isinstance(raw, dict) or not raw:
        raise _err(path, "no 'stages' mapping.", "add stages: with one entry (name: {run: RUN, route: {...}}) per model.")
    stages: dict[str, Stage] = {}
    for name, s in raw.items():
        name = str(name)
        if not isinstance(s, dict) or not s.get("run"):
            raise _err(path, f"stage '{name}' has no run.", f"add 'run: RUN_DIRECTORY' under stages.{name}.")
        route = s.get("route") or {}
        if not isinstance(route, dict):
            raise _err(path, f"stage '{name}': route must be a mapping class: next_stage.", "write e.g. route: {disease: kind}.")
        stages[name] = Stage(name, resolve_path(path, s["run"]), _mapping(path, name, s.get("classes")),
                             {str(k): str(v) for k, v in route.items()}, dict(s.get("train") or {}))
    start = str(doc.get("start") or next(iter(stages)))
    if start not in stages:
        raise _err(path, f"start stage '{start}' is not one of the stages ({', '.join(stages)}).", "fix 'start'.")
    for s in stages.values():
        for cls, target in s.route.items():
            if target not in stages:
                raise _err(path, f"stage '{s.name}' routes class '{cls}' to unknown stage '{target}'.",
                           f"route to one of: {', '.join(stages)}.")
    _check_no_loops(path, stages, start)
    data_path = resolve_path(path, doc["data"]) if doc.get("data") else None
    return CascadeSpec(path, stages, start, data_path, dict(doc.get("train") or {}))


def _check_no_loops(path: Path, stages: dict[str, Stage], start: str) -> None:
    def walk(name: str, seen: tuple[str, ...]):
        if name in seen:
            raise _err(path, f"the routes loop back to stage '{name}' ({' -> '.join(seen + (name,))}).",
                       "every route must lead to a later stage.")
        for target in stages[name].route.values():
            walk(target, seen + (name,))

    walk(start, ())
    unreachable = set(stages) - _reachable(stages, start)
    if unreachable:
        raise _err(path, f"stage(s) {', '.join(sorted(unreachable))} are never reached from '{start}'.",
                   "route a class to them or remove them.")


def _reachable(stages: dict[str, Stage], start: str) -> set[str]:
    out, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo += list(stages[n].route.values())
    return out



def stage_relabel(spec: CascadeSpec, stage: Stage, final_labels: Sequence[str]) -> dict[str, str | None]:
    """The stage's class for every final label it takes (others: None, left out)."""
    if stage.classes is None:
        raise _err(spec.path, f"stage '{stage.name}' has no 'classes' mapping, needed to build its training data.",
                   "map final labels to the stage's classes, e.g. classes: {no_disease: no_disease, '*': disease}.")
    named = set(stage.classes) - {"*"}
    unknown = sorted(named - set(final_labels))
    if unknown:
        raise _err(spec.path, f"stage '{stage.name}' maps label(s) {', '.join(unknown)} that the dataset spec does not "
                   f"have (it has: {', '.join(final_labels)}).", "fix the names under classes.")
    star = stage.classes.get("*")
    return {lab: stage.classes.get(lab, star) for lab in final_labels}

