"""Checks on the tree itself: lint clean, generated code in step with its sources, and a
README in every top-level folder."""

from __future__ import annotations

import filecmp
import subprocess
import sys

from infra import ROOT
from rpc import codegen


def test_ruff_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_grpc_modules_match_their_protos(tmp_path):
    codegen.generate(tmp_path)
    generated = sorted((tmp_path / "rpc" / "proto").glob("*_pb2*"))
    assert generated
    for file in generated:
        committed = ROOT / "rpc" / "proto" / file.name
        assert committed.exists() and filecmp.cmp(file, committed, shallow=False), (
            f"{committed.name} is stale: run python -m rpc.codegen"
        )


def test_every_top_level_folder_has_a_readme():
    folders = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")]
    missing = [p.name for p in folders if not (p / "README.md").exists()]
    assert not missing, f"folders without README.md: {missing}"


# -- the package graph ----------------------------------------------------------------------
# Dependencies point one way: infra at the bottom, the protocol machinery (rpc) above it,
# the hops (dns, cdn, gateway) beside each other above those, the shop's services above
# them, the tools (bench) on top. A module may import its own package and lower layers.
LAYERS = {"infra": 0, "rpc": 1, "dns": 2, "cdn": 2, "gateway": 2, "services": 3, "bench": 4}
# ./d11's command line lives in infra/ (the folder layout users know) but is the topmost
# tool: it hands each command to the layer that owns it.
TOOLS = {"infra/cli.py", "infra/__main__.py"}


def _imports(path) -> set[str]:
    """Every first-party package a module imports, module-level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in (*LAYERS, "tests")}
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in LAYERS}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            if str(path.relative_to(ROOT)) not in TOOLS:
                graph[package] |= _imports(path) - {package}
    return graph


def test_dependencies_point_one_way():
    upward = [
        f"{package} imports {other}"
        for package, others in package_graph().items()
        for other in others
        if other == "tests" or LAYERS[other] >= LAYERS[package]
    ]
    assert not upward, upward


def test_the_package_graph_has_no_cycle():
    graph = package_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError(f"cycle: {' → '.join([*path, node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in graph.get(node, ()):
            visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        visit(node, [])


def test_the_wires_are_listed_once_and_the_topology_follows():
    from infra import topology
    from services.openapi import document
    from services.wires import PROTOCOLS, WIRES

    roles = {h.role for h in topology.load().hosts if topology.ORDER_ROLE.fullmatch(h.role)}
    assert roles == {w.role for w in WIRES.values()}
    for wire in WIRES.values():
        module = wire.load()
        assert callable(module.build) and callable(module.main) and module.Client
        hosts = [h for h in topology.load().hosts if h.role == wire.role]
        assert len(hosts) >= 2 and all(h.module == wire.module for h in hosts)
    spec = document()["paths"]["/api/orders"]["post"]["parameters"]
    assert any(p.get("schema", {}).get("enum") == list(PROTOCOLS) for p in spec), spec
    # No other place spells the list out.
    spelled = subprocess.run(
        ["grep", "-rlE", "--include=*.py", r"\(\"grpc\", \"dubbo\", \"soap\"", str(ROOT)],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    assert [f for f in spelled if "/.venv/" not in f] == []


def test_the_origin_knows_the_catalogue_s_size():
    from cdn.origin import CATALOGUE_ITEMS
    from services.catalog import ITEM_COUNT

    assert CATALOGUE_ITEMS == ITEM_COUNT


def test_dnspython_is_not_in_the_environment():
    """The top-level package dns/ shares dnspython's import root: nothing in the lock may
    bring dnspython in, or `import dns` would mean two things."""
    import importlib.metadata
    import importlib.util

    import pytest

    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("dnspython")
    spec = importlib.util.find_spec("dns")
    assert spec is not None and set(spec.submodule_search_locations or []) == {str(ROOT / "dns")}
    lock = (ROOT / "requirements.lock").read_text().lower()
    assert "dnspython" not in lock
