"""The package layout holds: no import cycle among power's modules, and imports point only down
the layers drawn in README's Development section.

Every import counts, at module level, inside a function (a lazy import is still an arrow) or
under `TYPE_CHECKING`. The graph is read from the source with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

POWER = Path(__file__).resolve().parent.parent / "power"

#: Shared leaf modules: small vocabularies every layer may use.
LEAF = (
    "power.errors",
    "power.messages",
    "power.options",
    "power.durations",
    "power.config",
    "power.version",
)

#: What each part of power may import (its own package always; a prefix covers submodules).
ALLOWED: dict[str, tuple[str, ...]] = {
    "power": ("power.client", "power.version"),  # `power.Client`, lazily
    "power.__main__": ("power.cli",),
    "power.version": (),
    "power.messages": (),
    "power.options": ("power.errors",),
    "power.errors": (),
    "power.durations": (),
    "power.config": ("power.durations",),
    "power.client": ("power.version",),
    "power.gotemplate": (),
    "power.convert": (),
    "power.engine": LEAF,
    "power.registry": ("power.convert", "power.gotemplate", *LEAF),
    "power.prompt": ("power.gotemplate", "power.registry", *LEAF),
    "power.http": ("power.engine", "power.prompt", "power.registry", *LEAF),
    "power.cli": (
        "power.client",
        "power.http.server",  # `power serve`, imported when that command runs
        "power.engine.rpc",  # `power rpc-worker` runs ggml's RPC server here, not over HTTP
        "power.registry.modelfile",  # `create` reads the Modelfile on the client side
        "power.registry.names",
        *LEAF,
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(POWER.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Every module of power → the modules of power it imports (anywhere in its source)."""
    paths = {module_name(path): path for path in POWER.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up `level - 1` parents
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in paths else base)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def rule_of(module: str) -> str:
    """The entry of ALLOWED that governs `module` (the longest prefix; "power" is only the
    package's own `__init__`)."""
    keys = [k for k in ALLOWED if module == k or (k != "power" and module.startswith(k + "."))]
    assert keys, f"{module} belongs to no layer: give it an entry in ALLOWED"
    return max(keys, key=len)


def covers(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "power.http.app" in graph["power.http.server"]
    assert "power.gotemplate.template" in graph["power.prompt.render"]
    assert "power.cli.run" in graph["power.cli.main"]  # a lazy import inside a function


def test_no_import_cycle() -> None:
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, targets in sorted(import_graph().items()):
        rule = rule_of(module)
        allowed = ALLOWED[rule] if rule == "power" else (rule, *ALLOWED[rule])
        for target in sorted(targets):
            if any(covers(prefix, target) for prefix in allowed):
                continue
            wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
