"""The package's layers (docs/architecture.md): nothing imports upward, nothing below cli/ imports cli/."""

from __future__ import annotations

import ast
import os

import pytest

from tiny import REPO

PACKAGE = os.path.join(REPO, "openrlhf")

# Top to bottom. A module may import its own package and any package of a lower rank.
RANK = {
    "cli": 6,
    "pipeline": 5,
    "recipes": 4,
    "tools": 4,
    "eval": 4,
    "trainer": 3,
    "generation": 3,
    "logps": 2,
    "models": 1,
    "datasets": 1,
    "config": 0,
    "utils": 0,
}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, REPO), path


def _imports(path: str):
    """Every ``openrlhf.<package>`` a module imports, at any depth of the code (function-level too)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    here = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "openrlhf" and len(parts) > 1:
                yield node.lineno, parts[1]


def _package_of(rel: str) -> str:
    parts = rel.split(os.sep)
    return parts[1] if len(parts) > 2 else ""


def test_every_package_has_a_layer():
    packages = {d for d in os.listdir(PACKAGE) if os.path.isdir(os.path.join(PACKAGE, d)) and d != "__pycache__"}
    assert packages == set(RANK)


def test_no_module_outside_cli_imports_cli():
    bad = [
        f"{rel}:{line}"
        for rel, path in _modules()
        if _package_of(rel) != "cli"
        for line, pkg in _imports(path)
        if pkg == "cli"
    ]
    assert bad == []


@pytest.mark.parametrize("rel,path", list(_modules()), ids=[rel for rel, _ in _modules()])
def test_imports_go_down_the_layers(rel, path):
    own = _package_of(rel)
    if not own:
        return  # openrlhf/__init__.py
    upward = [
        f"line {line}: openrlhf.{pkg}"
        for line, pkg in _imports(path)
        if pkg in RANK and pkg != own and RANK[pkg] >= RANK[own] and not (RANK[own] == 0 and RANK[pkg] == 0)
    ]
    assert upward == [], f"{rel} imports a package at its own layer or above"


def test_config_and_utils_do_not_import_each_other_both_ways():
    """Layer 0 holds two packages; one builds on the other, never both ways: config/ uses utils/ (errors, paths,
    atomic files), and utils/ imports nothing of config/ (the choices it implements, PARAM_DTYPES and
    LR_SCHEDULERS, are declared in utils/ and re-exported by config/schema.py)."""
    edges = {("config", "utils"): [], ("utils", "config"): []}
    for rel, path in _modules():
        for line, pkg in _imports(path):
            if (_package_of(rel), pkg) in edges:
                edges[(_package_of(rel), pkg)].append(f"{rel}:{line}")
    assert edges[("config", "utils")], "config/ no longer uses utils/: revisit this rule"
    assert edges[("utils", "config")] == [], "utils/ imports config/ (config/ imports utils/)"


def test_package_inits_are_plain():
    """No lazy re-exports (a module-level ``__getattr__``): a name is imported from the module that defines it.
    Only config/ (its light parsing API) imports anything in its ``__init__``."""
    lazy, importing = [], []
    for rel, path in _modules():
        if os.path.basename(path) != "__init__.py":
            continue
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        names = {
            t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
        }
        names |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        if "__getattr__" in names or any(
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Tuple)
            and "__getattr__" in {e.id for e in node.targets[0].elts if isinstance(e, ast.Name)}
            for node in tree.body
        ):
            lazy.append(rel)
        if any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in tree.body):
            importing.append(_package_of(rel) or rel)
    assert lazy == []
    assert sorted(importing) == ["config"]
