"""The layering ARCHITECTURE.md draws, kept by a test: the import graph of the application code
(every import, also those only for type checking and those inside functions) has no circle, and
each package of gateway/ imports only the packages its paragraph allows."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ("schemas", "backends", "gateway")

# gateway's packages -> the gateway packages they may import (ARCHITECTURE.md). Below all of them:
# backends and schemas; above: app.py and cli.py, which may import anything.
ALLOWED = {
    "gateway.observability": set(),
    "gateway.http": {"gateway.observability"},
    "gateway.manifest": {"gateway.observability"},
    "gateway.models": {"gateway.manifest", "gateway.observability"},
    "gateway.media": {"gateway.http", "gateway.observability"},
    "gateway.state": {"gateway.http", "gateway.observability"},
    "gateway.api": {"gateway.http", "gateway.models", "gateway.manifest", "gateway.media", "gateway.state",
                    "gateway.observability"},
    # the adapters build the app in the server's own process (Granian's factory), so they sit on top
    "gateway.servers": {"gateway.app", "gateway.manifest", "gateway.http", "gateway.observability"},
}


def modules(*tops: str) -> dict[str, Path]:
    found = {}
    for top in tops:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of ours `name` imports, plus the packages that importing it runs (a.b.c runs a.b)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c imports a and a.b first
            prefix = ".".join(parts[:i])
            if prefix in known and prefix != name:
                found.add(prefix)
    return found


def graph() -> dict[str, set[str]]:
    known = modules(*APP)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gateway" and len(parts) > 2 else module


def test_the_application_code_has_no_import_circle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_schemas_import_nothing_of_ours_and_backends_never_import_the_gateway():
    for name, targets in graph().items():
        if name.startswith("schemas"):
            assert {t for t in targets if not t.startswith("schemas")} == set(), name
        if name.startswith("backends"):
            assert {t for t in targets if t.startswith("gateway")} == set(), name


def test_each_gateway_package_imports_only_what_architecture_md_allows():
    wrong = []
    for name, targets in graph().items():
        package = package_of(name)
        if package not in ALLOWED:
            continue
        for target in targets:
            other = package_of(target)
            if other.startswith("gateway.") and other != package and other not in ALLOWED[package]:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_every_gateway_package_is_described_in_architecture_md():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").glob("*/__init__.py")}
    assert packages <= {p.replace(".", "/") for p in ALLOWED}, "a package this test does not know: add its rules"
    for package in packages:
        assert f"`{package}/`" in text, package


def test_bench_imports_no_test_code():
    known = modules(*APP, "bench", "tests")
    for name, path in modules("bench").items():
        assert not any(t.startswith("tests") for t in imports(name, path, known)), name


def test_every_registered_engine_implements_the_contract_of_each_capability_it_declares():
    from backends.contracts import CONTRACTS, unimplemented
    from backends.registry import ENGINES

    for engine in ENGINES.values():
        for cls in {engine.load_class(1), engine.load_class(2)}:
            assert set(cls.capabilities) <= set(CONTRACTS), cls
            assert unimplemented(cls) == [], cls


def test_the_contract_check_finds_a_missing_method():
    from backends.base import Backend
    from backends.contracts import unimplemented

    class Half(Backend):
        capabilities = frozenset({"complete", "chat"})

        def complete(self, prompt, params, cancelled):
            return iter(())

    assert unimplemented(Half) == ["chat.chat"]


def test_routes_capabilities_and_live_fields_come_from_declarations():
    from gateway.api.table import CAPABILITY_ROUTES, TABLE
    from gateway.manifest.plan import LIVE_FIELDS
    from schemas.manifest import ModelSpec

    assert CAPABILITY_ROUTES == {r.path: r.capability for r in TABLE if r.capability}
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/audio/transcriptions", "/v1/images/generations"} <= set(
        CAPABILITY_ROUTES)
    assert "aliases" in LIVE_FIELDS and "nctx" not in LIVE_FIELDS and LIVE_FIELDS <= set(ModelSpec.model_fields)
