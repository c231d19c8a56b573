"""The package's layers run one way (io/config/errors -> data -> models -> training -> evaluation ->
inference -> explain -> cascade -> reports -> serve -> commands/cli), and no modules import each other
in a cycle, counting imports made inside functions. The walk is benchmarks/code_metrics.py's, so the
figures it reports and this test agree."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_metrics():
    spec = importlib.util.spec_from_file_location("code_metrics", ROOT / "benchmarks" / "code_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_from_a_layer_above_it():
    cm = _code_metrics()
    _modules, imports, *_ = cm.collect()
    up = cm.upward_imports(imports)
    assert not up, "imports from a layer above:\n" + "\n".join(f"  {a} -> {b}" for a, b in up)


def test_no_import_cycles():
    cm = _code_metrics()
    _modules, imports, *_ = cm.collect()
    found = cm.cycles(imports)
    assert not found, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in found)


def test_every_top_level_module_has_a_layer():
    """A new top-level module or package must be placed in LAYERS, or the test could not see it."""
    cm = _code_metrics()
    modules, *_ = cm.collect()
    unplaced = sorted(m for m in modules if cm.layer_of(m) is None)
    assert not unplaced, f"modules in no layer of benchmarks/code_metrics.py LAYERS: {', '.join(unplaced)}"


def test_the_walk_sees_upward_imports_and_cycles(tmp_path):
    """The checker itself fails on what it must catch (an upward import inside a function, a cycle)."""
    cm = _code_metrics()
    pkg = tmp_path / "medclassify"
    (pkg / "data").mkdir(parents=True)
    (pkg / "serve").mkdir()
    for f in ("__init__.py", "data/__init__.py", "serve/__init__.py", "serve/app.py"):
        (pkg / f).write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from ..serve import app\n    from . import b\n")
    (pkg / "data" / "b.py").write_text("from .a import f\n")
    _modules, imports, *_ = cm.collect(pkg)
    assert ("medclassify.data.a", "medclassify.serve.app") in cm.upward_imports(imports)
    assert ["medclassify.data.a", "medclassify.data.b"] in cm.cycles(imports)
