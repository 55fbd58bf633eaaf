"""Find values in test modules that are fixed when pytest imports them but depend on when or where they run.

pytest imports every test module at collection, long before most tests run: on a fresh machine the suite
takes twenty minutes, so `time.time() + 600` computed at import is in the past by the time its test runs
(issue 15). The same holds for a random port (taken by something else by then), a uuid or a random value
shared by tests that expect their own. Python evaluates at import: a module's and a class's body, decorators
(so `pytest.mark.parametrize` argument lists) and default argument values; not the bodies of functions and
lambdas. This module walks exactly those parts and reports calls whose value depends on the moment.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Qualified names whose result depends on the time, the machine's state or chance.
MOMENT_DEPENDENT = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "time.perf_counter_ns",
        "time.localtime",
        "time.gmtime",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
        "uuid.uuid1",
        "uuid.uuid4",
        "os.urandom",
        "os.getpid",
        "tests.support.ports.free_port",
        "tests.support.ports.bindable",
    }
)
# Whole modules whose every function is moment dependent.
MOMENT_DEPENDENT_MODULES = ("random.", "secrets.")


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    call: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}() is evaluated at import (collection), not when the test runs"


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> qualified name, from the module's imports (at any depth: a local import counts too)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import os.path` binds `os`; `import datetime as dt` binds `dt` to the whole dotted name.
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _qualified(func: ast.expr, aliases: dict[str, str]) -> str | None:
    dotted = _dotted(func)
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    base = aliases.get(head, head)
    return f"{base}.{rest}" if rest else base


def _evaluated_at_import(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under `node` that Python evaluates when the module is imported."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        # The decorators and the defaults run at definition; the body runs when called.
        evaluated: list[ast.AST] = [*node.decorator_list, *node.args.defaults]
        evaluated += [default for default in node.args.kw_defaults if default is not None]
        for child in evaluated:
            yield from _evaluated_at_import(child)
        return
    if isinstance(node, ast.Lambda):
        for child in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
            yield from _evaluated_at_import(child)
        return
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _evaluated_at_import(child)


def findings_in_source(source: str, path: Path) -> list[Finding]:
    tree = ast.parse(source, filename=str(path))
    aliases = _aliases(tree)
    found = []
    for node in _evaluated_at_import(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualified(node.func, aliases)
        if name == "random.Random" and (node.args or node.keywords):
            continue  # a seeded generator gives the same values in every run
        if name and (name in MOMENT_DEPENDENT or name.startswith(MOMENT_DEPENDENT_MODULES)):
            found.append(Finding(path, node.lineno, name))
    return found


def findings_in_tree(root: Path) -> list[Finding]:
    found: list[Finding] = []
    for path in sorted(root.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        found += findings_in_source(path.read_text(), path)
    return found
