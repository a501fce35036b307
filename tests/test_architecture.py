"""The package's shape: no import cycles (function-local and type-checking imports included), lower
layers never import upper ones, the library neither prints nor exits, and the public API is
importable from ``mtrec`` without loading what it does not need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from mtrec.architecture import LAYERS, layer_of

PACKAGE = ROOT / "src" / "mtrec"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every mtrec module ``name`` imports, wherever the import statement stands."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in MODULES and target != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for neighbour in sorted(graph[node]):
            if state.get(neighbour) == 1:
                return stack[stack.index(neighbour) :] + [neighbour]
            if neighbour not in state and (cycle := visit(neighbour)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_model_checkpoint_and_evaluation_modules_are_untangled():
    assert "mtrec.model" not in GRAPH["mtrec.io.checkpoint"]
    assert "mtrec.model" not in GRAPH["mtrec.eval.evaluation"]
    assert "mtrec.eval.evaluation" not in GRAPH["mtrec.io.checkpoint"]


@pytest.mark.slow
def test_importing_the_checkpoint_module_does_not_import_the_estimator():
    code = "import sys, mtrec.io.checkpoint; print('mtrec.model' in sys.modules, 'mtrec.train.steps' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


COMMAND_LINE = len(LAYERS) - 1


def upward_imports(name: str, graph: dict[str, set[str]]) -> list[str]:
    """The modules ``name`` imports from a layer above its own."""
    return sorted(target for target in graph[name] if (layer_of(target) or 0) > (layer_of(name) or 0))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_placed_in_one_declared_layer(name):
    assert layer_of(name) is not None, f"{name} is in no layer of mtrec.architecture.LAYERS"
    placed = [layer for layer, members in LAYERS for member in members if member.removesuffix(".*") == name]
    assert len(placed) <= 1, f"{name} is declared in {placed}"


def test_the_layer_check_fails_on_an_upward_import_and_an_undeclared_module():
    assert layer_of("mtrec.data.parsing") == 0 and layer_of("mtrec.cli.train") == COMMAND_LINE
    assert layer_of("mtrec.nn.network") < layer_of("mtrec.model") < layer_of("mtrec.serving.http")
    assert layer_of("mtrec.newthing") is None and layer_of("mtrec.datasets") is None  # no prefix placed by accident
    graph = {"mtrec.nn.network": {"mtrec.serving.http", "mtrec.nn.losses", "mtrec.errors"}, "mtrec.cli.train": {"mtrec.model"}}
    assert upward_imports("mtrec.nn.network", graph) == ["mtrec.serving.http"] and upward_imports("mtrec.cli.train", graph) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_lower_layers_never_import_upper_ones(name):
    upper = upward_imports(name, GRAPH)
    assert not upper, f"{name} ({LAYERS[layer_of(name) or 0][0]}) imports {upper}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer_of(n) != COMMAND_LINE))
def test_nothing_in_the_library_prints_or_exits(name):
    tree = ast.parse(MODULES[name].read_text())
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    names = {getattr(f, "id", None) for f in calls} | {f"{getattr(f.value, 'id', '')}.{f.attr}" for f in calls if isinstance(f, ast.Attribute)}
    assert not names & {"print", "exit", "sys.exit", "os._exit"}


def test_the_public_api_is_importable_from_mtrec():
    import mtrec
    from mtrec import MultitaskModel, load_movielens, random_split  # noqa: F401

    for name in mtrec.__all__:
        assert getattr(mtrec, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mtrec.nothing  # noqa: B018
