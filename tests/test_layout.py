"""The architecture of DESIGN.md, checked on the import statements of the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ("serving", "featurelog", "traffic")
# what each core subpackage may import from the others (traffic -> featurelog -> serving)
ALLOWED = {"serving": set(), "featurelog": {"serving"}, "traffic": {"featurelog", "serving"}}
# shared leaves at the top of gateway/ that import no other gateway module
LEAVES = {"gateway.errors", "gateway.metrics"}


def _imports(path: Path) -> list[str]:
    """Absolute module names a file imports (``from x import y`` gives ``x``)."""
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_core_subpackages_import_each_other_one_way_through_their_public_names() -> None:
    problems = []
    for package in CORE:
        for path in _sources(f"gateway/{package}"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] != "gateway" or name in LEAVES:
                    continue
                if len(parts) < 2 or parts[1] not in CORE:
                    problems.append(f"{_module(path)} imports {name} (outside the core)")
                elif parts[1] != package and parts[1] not in ALLOWED[package]:
                    problems.append(f"{_module(path)} imports {name} (against the direction)")
                elif parts[1] != package and len(parts) > 2:
                    problems.append(f"{_module(path)} imports {name} (not its package's names)")
    assert problems == []


def test_shared_leaves_import_nothing_of_the_gateway() -> None:
    for leaf in LEAVES:
        path = ROOT / (leaf.replace(".", "/") + ".py")
        assert [n for n in _imports(path) if n.split(".")[0] == "gateway"] == []


def test_registry_client_and_monitors_never_import_the_gateway() -> None:
    offenders = [
        f"{_module(path)} imports {name}"
        for package in ("registry_client", "monitors")
        for path in _sources(package)
        for name in _imports(path)
        if name.split(".")[0] == "gateway"
    ]
    assert offenders == []


def test_no_import_cycles_between_gateway_modules() -> None:
    modules = {_module(p): p for p in _sources("gateway")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path):
            # `from gateway.traffic import X` depends on the package's __init__
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
