"""The shape of the code, checked: layer contracts (import-linter), no import cycles, no
module over 400 lines, no class over 200, Ray only in fpnstream.cluster."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import grimp

from tests import procs
from tests.conftest import REPO

PACKAGE = REPO / "fpnstream"


def test_layer_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    proc = procs.run([lint, "--config", str(REPO / "pyproject.toml")], text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_no_import_cycles():
    graph = grimp.build_graph("fpnstream")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.append(" -> ".join((module, *back)))
    assert not cycles, "\n".join(cycles)


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_class_over_200_lines():
    big = {}
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                big[f"{p.relative_to(REPO)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    assert not big, big


def test_ray_is_imported_only_in_the_cluster_package():
    """Statically too (import-linter follows the package's imports; this reads every file)."""
    offenders = []
    for p in _sources():
        if p.parent.name == "cluster":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                offenders.append(f"{p.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
