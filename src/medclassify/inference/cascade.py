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

import numpy as np

from ..data.compose import read_yaml, resolve_path
from ..errors import ConfigError, MedClassifyError
from ..io import check_output_file, check_replaceable_dir, write_json, write_text
from ..reporting import Reporter
from ..run import load_run
from .predictor import DEFAULT_ABSTAIN_BELOW, Prediction, Predictor


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


@dataclass
class CascadeStep:
    stage: str
    label: str
    probability: float
    probabilities: dict[str, float]
    version: str


@dataclass
class CascadeResult:
    path: str | None
    label: str | None
    probability: float  # product of the chosen probabilities along the path
    steps: list[CascadeStep]
    abstain: bool
    error: str | None = None


class Cascade:
    """A loaded cascade: one Predictor per stage, checked against the routes."""

    def __init__(self, spec: CascadeSpec | str | Path, backend: str = "auto",
                 abstain_below: float | None = DEFAULT_ABSTAIN_BELOW, threads: int | None = None, tta: bool | None = None):
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
            self.predictors[s.name] = Predictor(run, backend=backend, abstain_below=abstain_below, threads=threads, tta=tta)
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
            steps.append(CascadeStep(name, pred.label, p, pred.probabilities, self.predictors[name].version))
            prob *= p
            abstain = abstain or pred.abstain
            nxt = self.spec.stages[name].route.get(pred.label)
            if nxt is None:
                return CascadeResult(path, pred.label, prob, steps, abstain)
            name = nxt

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


def check_training_spec(spec: CascadeSpec) -> list[str]:
    """Checks what train-cascade needs before any training starts; returns the final labels."""
    from ..data.compose import compose

    if spec.data is None:
        raise _err(spec.path, "no 'data' entry (the dataset spec to build the stages' data from).",
                   "add data: DATASET_SPEC.yaml (see the README).")
    final = compose(spec.data).classes
    for s in spec.stages.values():
        relabel = stage_relabel(spec, s, final)
        stage_classes = {v for v in relabel.values() if v}
        unknown = sorted(set(s.route) - stage_classes)
        if unknown:
            raise _err(spec.path, f"stage '{s.name}' routes class(es) {', '.join(unknown)} that its classes mapping "
                       f"does not produce ({', '.join(sorted(stage_classes))}).", "fix the names under route.")
        if len(stage_classes) < 2:
            raise _err(spec.path, f"stage '{s.name}' would have {len(stage_classes)} class(es); a classifier needs two.",
                       "map the final labels to at least two stage classes.")
    return final


def write_stage_spec(spec: CascadeSpec, stage: Stage, final_labels: Sequence[str], out: Path) -> Path:
    """A dataset spec for one stage: the cascade's sources, their class maps composed with the
    stage's (written next to the stage's run, so the run's config names a readable file)."""
    import yaml

    from ..data.compose import map_label, source_mapping
    from ..data.sources import scan_folder

    doc = read_yaml(spec.data, "dataset spec")
    relabel = stage_relabel(spec, stage, final_labels)
    sources = []
    for i, src in enumerate(doc["sources"]):
        folder = resolve_path(spec.data, src["path"])
        mapping = source_mapping(spec.data, i, src)
        classes = {}
        for c in scan_folder(folder).classes:
            final = map_label(c, mapping)
            classes[c] = relabel.get(final) if final is not None else None
        sources.append({"path": str(folder.resolve()), "classes": classes})
    return write_text(out, f"# generated by train-cascade from {spec.path} (stage {stage.name})\n"
                      + yaml.safe_dump({"sources": sources}))


def stage_spec_path(stage: Stage) -> Path:
    return stage.run.parent / f"{stage.run.name}.data.yaml"


def _check_stage_outputs(spec: CascadeSpec, stages: Sequence[Stage], overwrite: bool) -> None:
    """Before any stage trains: every stage's run folder is new, empty or a medclassify run (never a
    user's folder, never the dataset), and its generated data spec can be written."""
    doc = read_yaml(spec.data, "dataset spec")
    sources = doc.get("sources") if isinstance(doc.get("sources"), list) else []
    datasets = [resolve_path(spec.data, src["path"]) for src in sources if isinstance(src, dict) and "path" in src]
    for stage in stages:
        if (stage.run / "run.json").is_file() and not overwrite:
            continue  # kept as it is
        check_replaceable_dir(stage.run, overwrite=True, protected=datasets, what=f"stage '{stage.name}' run")
        check_output_file(stage_spec_path(stage), inputs=[spec.path, spec.data], protected_dirs=datasets,
                          what=f"stage '{stage.name}' data spec")


def train_cascade(path: str | Path, reporter: Reporter | None = None, overwrite: bool = False,
                  only: Sequence[str] | None = None) -> dict[str, Path]:
    """Train every stage (or `only` those) on its slice of the cascade's dataset spec."""
    from ..config import TrainConfig
    from ..training.fit import train

    reporter = reporter or Reporter()
    spec = read_cascade(path)
    final = check_training_spec(spec)
    names = list(only) if only else list(spec.stages)
    unknown = [n for n in names if n not in spec.stages]
    if unknown:
        raise _err(spec.path, f"no stage named {', '.join(unknown)}.", f"choose from {', '.join(spec.stages)}.")
    _check_stage_outputs(spec, [spec.stages[n] for n in names], overwrite)
    out = {}
    for n in names:
        stage = spec.stages[n]
        if (stage.run / "run.json").is_file() and not overwrite:
            reporter.info(f"Stage {n}: {stage.run} exists, kept (pass --overwrite to retrain).")
            out[n] = stage.run
            continue
        data = write_stage_spec(spec, stage, final, stage_spec_path(stage))
        options = {**spec.train, **stage.train}  # TrainConfig reads '4m' budgets and applies the epochs rule
        try:
            config = TrainConfig(data=str(data), out=str(stage.run), **options)
        except Exception as e:
            raise _err(spec.path, f"stage '{n}': invalid training options ({str(e).splitlines()[-1].strip()}).",
                       "use the names of `medclassify train` options (with underscores).") from None
        reporter.info(f"Stage {n}: training {config.model} on {data}.")
        out[n] = train(config, reporter=reporter, overwrite=True).run_dir
    return out


def evaluate_cascade(path: str | Path, data: str | Path | None = None, split: str = "test",
                     reporter: Reporter | None = None, backend: str = "auto") -> dict:
    """End-to-end metrics over the final labels on the `split` of the cascade's dataset spec (or of
    `data`), plus each stage's accuracy on the images that belong to it."""
    from ..data.sources import scan_folder
    from ..evaluation.metrics import compute_metrics

    reporter = reporter or Reporter(quiet=True)
    cascade = Cascade(path, backend=backend, abstain_below=None)
    source = Path(data) if data else cascade.spec.data
    if source is None:
        raise _err(cascade.spec.path, "no dataset to evaluate on.", "pass --data or add data: to the cascade file.")
    index = scan_folder(source)
    records = [r for r in index.records if r.split == split] if any(r.split for r in index.records) else index.records
    if not records:
        raise ConfigError(f"{source} has no {split!r} images.", "pass --split or a dataset with a test split.")
    unknown = sorted({r.label for r in records} - set(cascade.labels))
    if unknown:
        raise ConfigError(f"{source} has labels the cascade never outputs: {', '.join(unknown)} "
                          f"(its final labels: {', '.join(cascade.labels)}).", "map them in the dataset spec.")
    extra: dict[str, list[str]] = {}
    for s in cascade.spec.stages.values():
        if s.classes is not None:
            relabel = stage_relabel(cascade.spec, s, sorted({r.label for r in records}))
            extra[s.name] = [r.path for r in records if relabel.get(r.label)]
    paths = [r.path for r in records]
    reporter.info(f"Evaluating the cascade on {len(paths)} {split} images of {source}.")
    results, by_stage = cascade.predict_paths(paths, extra, on_stage=lambda n, k: reporter.info(f"  stage {n}: {k} image(s)"))
    ok = [(r, res) for r, res in zip(records, results) if not res.error]
    labels = cascade.labels
    idx = {c: i for i, c in enumerate(labels)}
    y = np.array([idx[r.label] for r, _ in ok])
    onehot = np.eye(len(labels))[[idx[res.label] for _, res in ok]]
    metrics = compute_metrics(y, onehot, labels)
    metrics["auc"] = metrics["log_loss"] = None  # a routed cascade gives one label, not a distribution
    metrics["unreadable"] = len(records) - len(ok)
    metrics["split"], metrics["source"] = split, str(source)
    metrics["stages"] = {}
    for s in cascade.spec.stages.values():
        if s.classes is None:
            continue
        relabel = stage_relabel(cascade.spec, s, sorted({r.label for r in records}))
        mine = [(relabel[r.label], by_stage[s.name][r.path]) for r in records if relabel.get(r.label)]
        mine = [(t, p) for t, p in mine if not p.error]
        metrics["stages"][s.name] = {"n": len(mine), "accuracy": float(np.mean([p.label == t for t, p in mine])) if mine else None,
                                     "version": cascade.predictors[s.name].version}
    metrics["version"] = cascade.version
    return metrics


def cascade_metrics_path(path: str | Path) -> Path:
    """Where evaluate-cascade saves its metrics (checked before the evaluation starts)."""
    out = Path(path).with_suffix(".metrics.json")
    return check_output_file(out, inputs=[path], what="cascade metrics file")


def save_cascade_metrics(path: Path, metrics: dict) -> Path:
    return write_json(cascade_metrics_path(path), metrics)


def cascade_summary(metrics: dict) -> str:
    stages = ", ".join(f"{n} {m['accuracy']:.1%} (n={m['n']})" for n, m in metrics["stages"].items() if m["accuracy"] is not None)
    return (f"cascade accuracy {metrics['accuracy']:.1%}, balanced {metrics['balanced_accuracy']:.1%} on {metrics['n']} images; "
            f"stages: {stages}")

