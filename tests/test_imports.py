"""The prediction modules import in one direction: no import cycle, lazy (in-function) imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "hits_stamps"
ONE_WAY = (
    "hits_stamps.montecarlo",
    "hits_stamps.uncertainty",
    "hits_stamps.training.modeldir",
    "hits_stamps.predictive",
    "hits_stamps.serve.backends",
    "hits_stamps.serve.predict",
    "hits_stamps.serve.dask_engine",
    "hits_stamps.evaluation.evaluate",
    "hits_stamps.evaluation.calibration",
)


def _name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file, except under `if TYPE_CHECKING:`."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for n in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hits_stamps"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("hits_stamps"))
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _reaches(graph: dict[str, set[str]], a: str, b: str) -> bool:
    seen, todo = {a}, [a]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt == b:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_graph_sees_lazy_imports():
    graph = import_graph()
    assert "hits_stamps.serve.dask_engine" in graph["hits_stamps.serve.predict"]  # imported inside a function
    assert "hits_stamps.training.modeldir" not in graph["hits_stamps.uncertainty"]  # gone (TYPE_CHECKING only)


@pytest.mark.parametrize("module", ONE_WAY)
def test_no_import_cycle_through(module):
    graph = import_graph()
    back = sorted(dep for dep in graph[module] if _reaches(graph, dep, module))
    assert not back, f"{module} imports {back}, which import it back"


def test_report_does_not_import_the_pipeline():
    """The report reads a run directory; the set names and titles it shares with the pipeline live in runsets."""
    graph = import_graph()
    pipeline = [m for m in graph if m.startswith("hits_stamps.pipeline")]
    found = sorted((m, p) for m in graph if m.startswith("hits_stamps.report") for p in pipeline
                   if _reaches(graph, m, p))
    assert not found, f"report modules reach pipeline modules: {found}"
    assert "hits_stamps.runsets" in graph["hits_stamps.report.context"]
