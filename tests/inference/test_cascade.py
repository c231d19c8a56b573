import json

import numpy as np
import pytest

from medclassify.cli import main
from medclassify.data.synthetic import generate_dataset
from medclassify.errors import ConfigError
from medclassify.cascade import Cascade, read_cascade

STAGES = """
train: {model: seed_cnn, image_size: 32, epochs: 1, time_budget: off, batch_size: 16, augment: light, early_stopping: 0}
start: screen
stages:
  screen:
    run: runs/screen
    classes: {healthy: healthy, "*": finding}
    route: {finding: kind}
  kind:
    run: runs/kind
    classes: {one: one, two: many, three: many}
    route: {many: count}
  count:
    run: runs/count
    classes: [two, three]
"""


@pytest.fixture(scope="module")
def cascade_file(tmp_path_factory):
    """Two sources, four final labels, a three-stage cascade trained by train-cascade."""
    root = tmp_path_factory.mktemp("cascade")
    generate_dataset(root / "src_a", classes=("none", "one", "two"), per_class=12, size=32, splits={"train": 0.75, "test": 0.25})
    generate_dataset(root / "src_b", classes=("normal", "x", "y", "three"), per_class=12, size=32,
                     splits={"train": 0.75, "test": 0.25}, seed=2)
    (root / "data.yaml").write_text("sources:\n  - path: src_a\n    classes: {none: healthy}\n"
                                    "  - path: src_b\n    classes: {normal: healthy}\n    drop: [x, y]\n")
    path = root / "cascade.yaml"
    path.write_text("data: data.yaml\n" + STAGES)
    assert main(["train-cascade", str(path), "-q"]) == 0
    return path


def test_train_cascade_builds_each_stage_from_the_composed_spec(cascade_file):
    from medclassify.run import load_run

    runs = cascade_file.parent / "runs"
    assert load_run(runs / "screen").classes == ["finding", "healthy"]
    assert load_run(runs / "kind").classes == ["many", "one"]
    assert load_run(runs / "count").classes == ["three", "two"]
    screen_counts = load_run(runs / "screen").info["data"]["counts"]
    assert screen_counts["test"] == {"finding": 9, "healthy": 6}  # both sources' official test splits
    assert (runs / "kind.data.yaml").is_file()


def test_evaluate_cascade_end_to_end(cascade_file, capsys):
    assert main(["evaluate-cascade", str(cascade_file), "-q"]) == 0
    out = capsys.readouterr().out
    assert "cascade accuracy" in out
    metrics = json.loads(cascade_file.with_suffix(".metrics.json").read_text())
    assert metrics["classes"] == ["healthy", "one", "three", "two"]
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == metrics["n"] == 15
    assert cm.sum(1).tolist() == [6, 3, 3, 3]
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / 15)
    assert set(metrics["stages"]) == {"screen", "kind", "count"}
    assert [metrics["stages"][s]["n"] for s in ("screen", "kind", "count")] == [15, 9, 6]


def test_batch_routing_equals_single_file_routing(cascade_file):
    from medclassify.data.sources import scan_folder

    cascade = Cascade(cascade_file)
    paths = [r.path for r in scan_folder(cascade_file.parent / "data.yaml").records if r.split == "test"]
    batch, _ = cascade.predict_paths(paths)
    for res in batch:
        single = cascade.predict_file(res.path)
        assert single.label == res.label and [s.stage for s in single.steps] == [s.stage for s in res.steps]
        assert single.steps[0].stage == "screen"
        assert res.label in cascade.labels
        assert res.probability == pytest.approx(np.prod([s.probability for s in res.steps]))


def _variant(cascade_file, name, text):
    p = cascade_file.parent / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.replace("run: runs/kind", "run: runs/missing"), "stage 'kind' run .*missing does not exist"),
    (lambda s: s.replace("route: {many: count}", "route: {plenty: count}"), "routes class.*plenty"),
    (lambda s: s.replace("route: {many: count}", "route: {many: nowhere}"), "unknown stage 'nowhere'"),
    (lambda s: s.replace("route: {many: count}", "route: {many: screen}"), "loop"),
])
def test_bad_cascade_files_are_one_line_errors(cascade_file, edit, match, capsys):
    bad = _variant(cascade_file, "bad.yaml", edit(cascade_file.read_text()))
    with pytest.raises(ConfigError, match=match):
        Cascade(bad)
    assert main(["evaluate-cascade", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "bad.yaml" in err[0]


def test_stage_mapping_with_an_unknown_label_is_caught_before_training(cascade_file):
    from medclassify.cascade import check_training_spec

    bad = _variant(cascade_file, "bad_map.yaml",
                   cascade_file.read_text().replace("classes: [two, three]", "classes: [two, four]"))
    with pytest.raises(ConfigError, match="four"):
        check_training_spec(read_cascade(bad))
