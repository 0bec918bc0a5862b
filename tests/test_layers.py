"""The layers of src/etarec run one way, and no module imports itself around a cycle.

Every import is read from the source (function-level imports included, since hiding an import
inside a function does not remove the dependency). Bottom to top:

    errors, allocator -> config, atomic -> retrieval | data -> nn -> models -> store -> scale -> train | serve -> compare, report
    -> cli -> __main__

A module may import its own package and anything below its layer; packages on one layer side by
side (retrieval | data, train | serve) do not import each other.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "etarec"

LAYERS = [  # bottom first; one entry = one layer, its parts side by side
    {"errors", "allocator"},
    {"config", "atomic"},
    {"retrieval", "data"},
    {"nn"},
    {"models"},
    {"store"},
    {"scale"},  # TorchRec tables (optional extra): imported by train only when a config asks
    {"train", "serve"},
    {"compare", "report"},
    {"cli", "__init__"},
    {"__main__"},
]
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def part_of(module: str) -> str:
    """etarec.models.eta -> models; etarec.cli -> cli; etarec -> __init__"""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported etarec module, line) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "etarec"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "etarec":
            # `from etarec.retrieval import native` imports the module etarec.retrieval.native
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.append((candidate if module_path(candidate) else node.module, node.lineno))
    return found


def module_path(module: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def dependency_graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_package_part_has_a_layer():
    parts = {part_of(module) for module in dependency_graph()}
    assert parts <= set(LAYER_OF), f"give these a layer in tests/test_layers.py: {sorted(parts - set(LAYER_OF))}"


def test_imports_point_down_the_layers():
    graph = dependency_graph()
    problems = []
    for module, imported in graph.items():
        source = part_of(module)
        for target_module, line in imported:
            target = part_of(target_module)
            if target == source:
                continue
            file = module_path(module).relative_to(PACKAGE.parent.parent)
            if LAYER_OF[target] > LAYER_OF[source]:
                problems.append(f"{file}:{line} imports {target_module}: {source} sits below {target}")
            elif LAYER_OF[target] == LAYER_OF[source]:
                problems.append(f"{file}:{line} imports {target_module}: {source} and {target} sit side by side "
                                "and must not import each other")
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_no_import_cycles():
    graph = {module: sorted({target for target, _ in imported if target in dependency_graph_modules()})
             for module, imported in dependency_graph().items()}
    cycles = []
    state: dict[str, str] = {}  # module -> "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in graph.get(module, []):
            if target == module or target == "etarec":  # a package's own __init__ re-exports
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles (a function-level import is still an import):\n" + "\n".join(cycles)


def dependency_graph_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def test_the_layer_test_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule can fail: a data module importing a model is reported with its file and line."""
    package = tmp_path / "etarec"
    (package / "data").mkdir(parents=True)
    (package / "models").mkdir()
    for folder in (package, package / "data", package / "models"):
        (folder / "__init__.py").write_text("")
    (package / "models" / "eta.py").write_text("X = 1\n")
    (package / "data" / "reader.py").write_text("def read():\n    from etarec.models.eta import X\n    return X\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    try:
        test_imports_point_down_the_layers()
    except AssertionError as error:
        assert "reader.py:2 imports etarec.models.eta: data sits below models" in str(error)
    else:
        raise AssertionError("an upward import went unnoticed")
