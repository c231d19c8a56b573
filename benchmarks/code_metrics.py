"""Architecture figures of src/medclassify: lines of code, largest functions, imports that go up the
layer order (including imports made inside functions) and import cycles between modules.

    python benchmarks/code_metrics.py [--json benchmarks/results/code_metrics.json]

The layer order is the project's: io/config/errors -> data -> models -> training -> evaluation ->
inference -> explain -> cascade -> serve -> commands/cli. Imports within one layer are allowed.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "medclassify"
PACKAGE = "medclassify"
LAYERS = [
    {"errors", "io", "config", "reporting", "version", "runtime", "pages", "presets"},
    {"data"},
    # the run record builds its model, and the one forward pass (engine) runs a model or an ONNX
    # session: both sit below training, which writes runs and validates through the engine
    {"models", "run", "engine", "ood"},
    {"training"},
    {"evaluation"},
    {"inference"},
    {"explain"},
    {"cascade"},
    {"reports"},
    {"serve"},
    {"commands", "cli", "demo", "api", "results", "__main__", "__init__"},  # the package's own API sits on top
]


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str, layers=LAYERS) -> int | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(layers):
        if top in names:
            return i
    return None


def resolve(module: str, is_pkg: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from . import x` / `from .pkg import mod`: the names may be submodules; the package itself is
    # a dependency only for the names that are not (a submodule's import runs its package anyway)
    return [target] + [f"{target}.{a.name}" for a in node.names]


def collect(root: Path = ROOT):
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        modules[module_name(path, root)] = path
    imports: dict[str, set[str]] = {}
    nested: dict[str, int] = {}
    functions: list[tuple[int, str]] = []
    loc = 0
    for mod, path in modules.items():
        src = path.read_text()
        loc += sum(1 for line in src.splitlines() if line.strip() and not line.strip().startswith("#"))
        tree = ast.parse(src)
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = resolve(mod, is_pkg, node)
                if isinstance(node, ast.ImportFrom) and all(t in modules for t in targets[1:]):
                    targets = targets[1:]
                for t in targets:
                    if t in modules:
                        deps.add(t)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                functions.append((length, f"{mod}:{node.name}"))
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and any(t in modules for t in resolve(mod, is_pkg, sub)):
                        nested[mod] = nested.get(mod, 0) + 1
        deps.discard(mod)
        imports[mod] = deps
    return modules, imports, nested, sorted(functions, reverse=True), loc


def upward_imports(imports: dict[str, set[str]], layers=LAYERS) -> list[tuple[str, str]]:
    bad = []
    for mod, deps in imports.items():
        lm = layer_of(mod, layers)
        for d in deps:
            ld = layer_of(d, layers)
            if lm is not None and ld is not None and ld > lm:
                bad.append((mod, d))
    return sorted(bad)


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in imports.get(v, ()):
            # a package's __init__ importing its own submodules is how packages work, not a cycle
            if w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(imports):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    modules, imports, nested, functions, loc = collect()
    up = upward_imports(imports)
    cyc = cycles(imports)
    result = {
        "modules": len(modules),
        "lines_of_code": loc,
        "largest_functions": [{"lines": n, "function": f} for n, f in functions[:8]],
        "imports_inside_functions": sum(nested.values()),
        "upward_imports": [f"{a} -> {b}" for a, b in up],
        "cycles": cyc,
    }
    print(f"{len(modules)} modules, {loc} lines of code (non-blank, non-comment)")
    print("largest functions: " + ", ".join(f"{f} ({n})" for n, f in functions[:5]))
    print(f"imports inside functions: {result['imports_inside_functions']}")
    print(f"upward imports: {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")
    print(f"import cycles: {len(cyc)}" + "".join(f"\n  {' <-> '.join(c)}" for c in cyc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
