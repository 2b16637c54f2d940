"""The packages' layering (docs/design.md, "Layers"): each package imports only those below it, at module
level or inside a function, and no two modules import each other at module level."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ("collabfeat", "transform", "trainer", "serving", "pipeline", "kubeflow")
# package -> the project's packages it may import (itself included); serving.build is a package of its own
ALLOWED = {
    "collabfeat": {"collabfeat"},
    "transform": {"collabfeat", "transform"},
    "trainer": {"collabfeat", "trainer"},
    "serving": {"collabfeat", "serving"},
    "serving.build": {"collabfeat", "trainer", "serving", "serving.build"},
    "pipeline": {"collabfeat", "transform", "trainer", "serving", "serving.build", "pipeline"},
    "kubeflow": {"collabfeat", "transform", "trainer", "serving", "serving.build", "pipeline", "kubeflow"},
}
ON_TOP = {"collabfeat.cli", "collabfeat.__main__"}  # the command line: above every package


def modules():
    for top in PROJECT:
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), REPO)[:-3].replace(os.sep, ".")
                    yield rel.removesuffix(".__init__"), os.path.join(d, f)


def layer(module: str) -> str:
    return "serving.build" if module.startswith("serving.build") else module.split(".")[0]


def imports(path: str, module_level_only: bool = False):
    """(imported module, line) of a file's imports of the project's modules."""
    tree = ast.parse(open(path).read())
    nodes = tree.body if module_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PROJECT:
                yield name, node.lineno


def test_every_package_imports_only_the_layers_below_it():
    found = list(modules())
    assert len(found) > 40, found  # the walk sees the code
    wrong = []
    for module, path in found:
        if module in ON_TOP:
            continue
        for name, line in imports(path):
            if layer(name) not in ALLOWED[layer(module)]:
                wrong.append(f"{module}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other_at_module_level():
    known = dict(modules())
    graph = {m: {n for n, _ in imports(p, module_level_only=True) if n in known and n != m} for m, p in known.items()}
    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    assert not cycles, cycles


@pytest.mark.parametrize("bad", ["from pipeline import components", "import serving.build.push"])
def test_the_check_sees_an_import_inside_a_function(tmp_path, bad):
    path = tmp_path / "m.py"
    path.write_text(f"import numpy\n\n\ndef f():\n    {bad}\n")
    found = list(imports(str(path)))
    assert found and all(line == 5 and layer(name) not in ALLOWED["trainer"] for name, line in found), found


def test_every_import_inside_a_function_says_why():
    """Imports go at the top of a module; one inside a function (a heavy or optional dependency, wanted on
    one path only) carries its reason: `# lazy: ...` on its line."""
    unexplained = []
    for top in PROJECT + ("bench",):
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                path = os.path.join(d, f)
                lines = open(path).read().split("\n")
                tree = ast.parse("\n".join(lines))
                at_top = {id(n) for n in tree.body}
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in at_top:
                        if "# lazy: " not in lines[node.end_lineno - 1]:
                            unexplained.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert not unexplained, unexplained
