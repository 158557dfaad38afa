"""The package's folders are its layers (docs/architecture.md): a module imports only from its
own folder or a lower one, and no modules import each other in a circle. Read from the code's
own import statements (function-level imports included; ``TYPE_CHECKING`` blocks excluded)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "otpy"
LAYERS = ["specs", "host", "wire", "supervision", "variables", "agent", "processes", "topology", "node",
          "optimize", "dspy", "cli"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(child) for child in ast.walk(node))
    return inside


def imports() -> dict[str, set[str]]:
    """``{module: modules of otpy it imports}``, for every module of the package."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        targets = found.setdefault(name, set())
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else (node.module or "")
                if base.split(".")[0] == "otpy":
                    targets.update(f"{base}.{alias.name}" if not node.module else base for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.split(".")[0] == "otpy")
    modules = set(found)
    # ``from .pkg import module`` names a module; ``from .module import name`` names its module
    return {m: {t if t in modules else t.rsplit(".", 1)[0] for t in ts} & modules for m, ts in found.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer_folder():
    loose = [m for m in imports() if _layer(m) is None and m not in ("otpy", "otpy.__main__")]
    assert loose == []


def test_no_module_imports_a_higher_layer():
    upward = sorted(
        (module, target) for module, targets in imports().items() for target in targets
        if _layer(module) and _layer(target) and LAYERS.index(_layer(target)) > LAYERS.index(_layer(module)))
    assert upward == []


def test_no_import_circles():
    graph = imports()
    state: dict[str, int] = {}  # 1 on the path, 2 done
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
