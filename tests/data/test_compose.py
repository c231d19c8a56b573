import pytest

from medclassify.data.compose import compose
from medclassify.data.sources import scan_folder
from medclassify.data.synthetic import generate_dataset
from medclassify.errors import ConfigError


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("compose")
    a = generate_dataset(root / "alz", classes=("NonDemented", "Mild", "Moderate"), per_class=10, size=24,
                         splits={"train": 0.7, "test": 0.3})
    b = generate_dataset(root / "tumor", classes=("no_tumor", "glioma", "pituitary"), per_class=10, size=24,
                         splits={"train": 0.7, "test": 0.3}, seed=1)
    return root, a, b


def write(path, text):
    path.write_text(text)
    return path


def test_merges_sources_maps_classes_and_keeps_official_splits(two_sources):
    root, a, b = two_sources
    spec = write(root / "spec.yaml", f"""
sources:
  - path: alz
    classes: {{NonDemented: no_disease, "*": alzheimer}}
  - path: {b}
    classes: {{no_tumor: no_disease, pituitary: null}}
""")
    index = scan_folder(spec)  # what `medclassify train spec.yaml` reads
    assert index.classes == ["alzheimer", "glioma", "no_disease"]
    counts = index.counts()
    assert counts["train"] == {"alzheimer": 14, "glioma": 7, "no_disease": 14}
    assert counts["test"] == {"alzheimer": 6, "glioma": 3, "no_disease": 6}
    originals = {r.path: r.split for r in scan_folder(a).records + scan_folder(b).records}
    assert all(originals[r.path] == r.split for r in index.records)


def test_relabel_for_a_stage_leaves_out_unlisted_labels(two_sources):
    root, _, _ = two_sources
    spec = write(root / "spec2.yaml", "sources:\n  - path: alz\n  - path: tumor\n")
    index = compose(spec, relabel={"Mild": "alzheimer", "Moderate": "alzheimer", "glioma": "tumor", "pituitary": "tumor"})
    assert index.classes == ["alzheimer", "tumor"]
    assert len(index.records) == 40


@pytest.mark.parametrize("body, match", [
    ("sources:\n  - path: alz\n    classes: {Severe: x}\n", "does not have"),
    ("sources: []\n", "no 'sources'"),
    ("sources:\n  - classes: {}\n", "has no path"),
    ("sources:\n  - path: alz\n   bad: [\n", "not valid YAML"),
    ("- just a list\n", "mapping"),
])
def test_spec_mistakes_are_one_line_errors(two_sources, body, match):
    root, _, _ = two_sources
    spec = write(root / "bad.yaml", body)
    with pytest.raises(ConfigError, match=match) as e:
        compose(spec)
    assert "\n" not in str(e.value)


def test_missing_source_folder_names_it(two_sources):
    from medclassify.errors import DataError

    root, _, _ = two_sources
    spec = write(root / "missing.yaml", "sources:\n  - path: nowhere\n")
    with pytest.raises(DataError, match="nowhere"):
        compose(spec)
