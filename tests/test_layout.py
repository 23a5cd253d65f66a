"""The shape of the package: imports point one way, no private names cross modules.

The import graph is read from the source (every ``import``, also inside functions), so a
cycle hidden behind a function-local import is found too.
"""

import ast
from pathlib import Path

import perceptio

ROOT = Path(perceptio.__file__).parent

# Lower layers first; a module may import its own layer and the ones before it.
LAYERS = [
    ["config", "limits", "overrides", "tokenizer", "layers"],
    ["adapters"],
    ["queries"],
    ["encoder", "decoder", "resampler"],
    ["model", "pretrained", "perceiver_ar", "generation"],
    ["architectures"],
    ["presets"],
    ["interop", "hub", "checkpoints", "data"],
    ["train", "tasks", "bench"],
    ["cli", "__main__", "__init__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(imported module, names)`` of every import in ``path``, relative ones resolved."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [alias.name for alias in node.names]
            if node.module is None:  # from . import x: x may be a module
                found += [(f"{target}.{n}", []) for n in names]
            else:
                found.append((target, names))
    return found


def top(module: str) -> str:
    """The first component below ``perceptio`` (``perceptio.adapters.text`` -> ``adapters``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


SOURCES = sorted(ROOT.rglob("*.py"))


def test_the_package_has_the_layers_this_test_knows():
    unknown = sorted({top(module_name(p)) for p in SOURCES} - set(RANK))
    assert not unknown, f"add {unknown} to LAYERS in {__file__}"


def test_imports_point_down():
    upward = []
    for path in SOURCES:
        here = module_name(path)
        for target, _ in imports(path):
            if target.split(".")[0] != "perceptio" or here == "perceptio":
                continue
            if RANK.get(top(target), 0) > RANK[top(here)]:
                upward.append(f"{here} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    modules = {module_name(p) for p in SOURCES}
    for path in SOURCES:
        here = module_name(path)
        graph[here] = set()
        for target, names in imports(path):
            if not target.startswith("perceptio"):
                continue
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in modules and candidate != here and not here.startswith(candidate + "."):
                    graph[here].add(candidate)
                    break
    assert sum(map(len, graph.values())) > 100  # the graph was read
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == "perceptio":  # the root's re-exports
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_no_private_names_cross_modules():
    crossing = []
    for path in SOURCES:
        for target, names in imports(path):
            if target.startswith("perceptio") or target.startswith("."):
                crossing += [f"{module_name(path)} imports {target}.{n}" for n in names
                             if n.startswith("_") and not n.startswith("__")]
    assert not crossing, "\n".join(crossing)


def test_the_package_imports_nothing_outside_itself_of_this_repository():
    # benchmarks/, tests/: a wheel ships neither.
    outside = [f"{module_name(p)} imports {t}" for p in SOURCES for t, _ in imports(p)
               if t.split(".")[0] in ("benchmarks", "tests", "conftest")]
    assert not outside, "\n".join(outside)
