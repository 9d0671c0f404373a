"""The engine's layering, checked on the import graph (grimp, the library behind import-linter).

- No import circle inside conveyor.engine: a deployment, a rollback and the supervisor get a
  Context, never the Engine.
- No engine module names a concrete runtime or router: the registries (runtimes/registry.py,
  routers/registry.py) make them by name, and the engine goes through the interfaces.
- The pure core imports no I/O layer.
"""

from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("conveyor")


def _cycles(graph: grimp.ImportGraph, package: str) -> list[tuple[str, str]]:
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    return [
        (a, b)
        for i, a in enumerate(modules)
        for b in modules[i + 1 :]
        if graph.chain_exists(importer=a, imported=b) and graph.chain_exists(importer=b, imported=a)
    ]


@pytest.mark.parametrize(
    "package",
    ["conveyor.engine", "conveyor.runtimes", "conveyor.routers", "conveyor.store", "conveyor.core"],
)
def test_no_import_circle(graph: grimp.ImportGraph, package: str) -> None:
    assert _cycles(graph, package) == []


def test_no_engine_module_names_a_concrete_runtime_or_router(
    graph: grimp.ImportGraph,
) -> None:
    interfaces = {"base", "registry", "kinds"}
    concrete = {
        m
        for m in graph.modules
        if m.startswith(("conveyor.runtimes.", "conveyor.routers."))
        and m.rsplit(".", 1)[1] not in interfaces
    }
    assert {"conveyor.runtimes.local", "conveyor.routers.builtin"} <= concrete
    engine = sorted(m for m in graph.modules if m.startswith("conveyor.engine."))
    direct = {
        (m, imported)
        for m in engine
        for imported in graph.find_modules_directly_imported_by(m)
        if imported in concrete
    }
    assert direct == set()


def test_the_core_does_no_io(graph: grimp.ImportGraph) -> None:
    core = [m for m in graph.modules if m.startswith("conveyor.core")]
    layers = ["conveyor.engine", "conveyor.store", "conveyor.runtimes", "conveyor.routers"]
    for module in core:
        for layer in layers:
            assert not graph.chain_exists(importer=module, imported=layer, as_packages=True), (
                module,
                layer,
            )
