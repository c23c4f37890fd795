"""Architecture rules, read from the package source with ast (nothing is imported):

- no import cycle between warmgw modules. Every import statement counts, wherever it is: at
  the top, under `if TYPE_CHECKING:`, inside a function. A cycle closed by a TYPE_CHECKING
  import still ties the modules together (mypy and readers must take them as one);
- modules under warmgw/core/ import only the standard library and warmgw.core;
- no module is over MAX_LINES lines.

Modules are named by file: warmgw/sim/__init__.py is `warmgw.sim`. An import names the most
specific module it reaches: `from warmgw.sim import api` is an edge to warmgw.sim.api (not
to warmgw.sim), `from warmgw.sim import SimReplica` an edge to warmgw.sim.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "warmgw"
CORE = "warmgw.core"
MAX_LINES = 400


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name, resolved to a module of the package where it is one
    line: int


def package_modules(root: Path, package: str) -> dict[str, Module]:
    """Every .py file under root/package, by dotted module name."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = [package, *path.relative_to(root / package).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package)
    return modules


def _known_prefix(name: str, known: Mapping[str, Module]) -> str:
    """The longest dotted prefix of name that is a known module (name itself if none is)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in known:
            return prefix
    return name


def imports_of(module: Module, known: Mapping[str, Module]) -> Iterator[Import]:
    """Every import statement anywhere in the module, resolved to absolute names."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(_known_prefix(alias.name, known), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.name.split(".")
                if not module.is_package:
                    anchor.pop()
                if node.level > 1:
                    anchor = anchor[: -(node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in known else _known_prefix(base, known)
                yield Import(target, node.lineno)


def import_graph(modules: Mapping[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {imported package module: line of the first import of it}."""
    graph: dict[str, dict[str, int]] = {}
    for name, module in modules.items():
        edges = graph.setdefault(name, {})
        for imp in imports_of(module, modules):
            if imp.target in modules and imp.target != name:
                edges[imp.target] = min(edges.get(imp.target, imp.line), imp.line)
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """A shortest cycle through each node that lies on one, as [a, b, ..., a], each cycle
    once (rotated to start at its smallest node), sorted."""
    succ = {node: sorted(set(targets)) for node, targets in graph.items()}
    cycles: set[tuple[str, ...]] = set()
    for start in sorted(succ):
        parent: dict[str, str] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if start in succ.get(node, ()):
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                ring = path[::-1]  # start, ..., node
                i = ring.index(min(ring))
                cycles.add(tuple(ring[i:] + ring[:i]))
                break
            for nxt in succ.get(node, ()):
                if nxt != start and nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
    return [[*ring, ring[0]] for ring in sorted(cycles)]


def cycle_problems(root: Path, package: str) -> list[str]:
    modules = package_modules(root, package)
    graph = import_graph(modules)
    problems = []
    for cycle in find_cycles(graph):
        lines = [" -> ".join(cycle)]
        for a, b in pairwise(cycle):
            where = modules[a].path.relative_to(root)
            lines.append(f"    {where}:{graph[a][b]} imports {b}")
        problems.append("\n".join(lines))
    return problems


def core_problems(root: Path, package: str, core: str) -> list[str]:
    modules = package_modules(root, package)
    problems = []
    for name, module in modules.items():
        if name != core and not name.startswith(core + "."):
            continue
        for imp in imports_of(module, modules):
            top = imp.target.split(".")[0]
            if imp.target == core or imp.target.startswith(core + "."):
                continue
            if top in sys.stdlib_module_names and top != package:
                continue
            where = module.path.relative_to(root)
            problems.append(f"{where}:{imp.line} imports {imp.target}")
    return problems


def size_problems(root: Path, package: str, limit: int) -> list[str]:
    problems = []
    for module in package_modules(root, package).values():
        count = len(module.path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            problems.append(f"{module.path.relative_to(root)}: {count} lines (limit {limit})")
    return problems


# ---------------------------------------------------------------- the rules, on warmgw


def test_no_import_cycles_between_warmgw_modules() -> None:
    problems = cycle_problems(REPO, PACKAGE)
    assert not problems, (
        "import cycles between warmgw modules (every import counts, TYPE_CHECKING ones and "
        "imports inside functions too):\n" + "\n".join(problems)
    )


def test_core_imports_only_the_standard_library_and_core() -> None:
    problems = core_problems(REPO, PACKAGE, CORE)
    assert not problems, (
        f"{CORE} may import only the standard library and {CORE}:\n" + "\n".join(problems)
    )


def test_no_module_is_over_the_line_limit() -> None:
    problems = size_problems(REPO, PACKAGE, MAX_LINES)
    assert not problems, f"modules over {MAX_LINES} lines:\n" + "\n".join(problems)


def test_the_walk_sees_the_whole_package() -> None:
    modules = package_modules(REPO, PACKAGE)
    assert {"warmgw", "warmgw.core", "warmgw.core.picker", "warmgw.sim.server"} <= set(modules)
    graph = import_graph(modules)
    # from warmgw.sim import api (a submodule) reaches the submodule, not the package
    assert "warmgw.sim.api" in graph["warmgw.sim.server"]
    assert "warmgw.sim.server" in graph["warmgw.sim"]  # __init__ imports count as the package


# ---------------------------------------------------------------- the checker, on fakes


@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({"a": ["b"], "b": ["c"], "c": []}, []),
        ({"a": ["b", "c"], "b": ["c"], "c": []}, []),  # a diamond is no cycle
        ({"a": ["b"], "b": ["a"]}, [["a", "b", "a"]]),
        ({"c": ["a"], "a": ["b"], "b": ["c"], "d": ["a"]}, [["a", "b", "c", "a"]]),
        (
            {"app": ["admin", "metrics"], "admin": ["app"], "metrics": ["app"]},
            [["admin", "app", "admin"], ["app", "metrics", "app"]],
        ),
        ({"a": ["b"], "b": ["c", "a"], "c": ["a"], "x": ["y"], "y": ["x"]},
         [["a", "b", "a"], ["a", "b", "c", "a"], ["x", "y", "x"]]),
    ],
)
def test_find_cycles(graph: dict[str, list[str]], cycles: list[list[str]]) -> None:
    assert find_cycles(graph) == cycles


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_checks_fail_on_a_fake_package(tmp_path: Path) -> None:
    write(tmp_path, "pkg/__init__.py", "from pkg.top import run\n")
    # top -> sub.b only through a TYPE_CHECKING import, sub.b -> top from inside a function
    write(
        tmp_path,
        "pkg/top.py",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.sub import b\n"
        "def run() -> None: ...\n",
    )
    write(tmp_path, "pkg/sub/__init__.py", "")
    write(tmp_path, "pkg/sub/b.py", "def f() -> None:\n    from .. import top\n")
    write(tmp_path, "pkg/sub/c.py", "from . import b\nfrom .b import f\n")
    write(
        tmp_path,
        "pkg/core/__init__.py",
        "from __future__ import annotations\nimport json\nfrom pkg.core import x\n",
    )
    write(
        tmp_path,
        "pkg/core/x.py",
        "from typing import TYPE_CHECKING\n"
        "from . import y\n"
        "if TYPE_CHECKING:\n"
        "    import aiohttp.web\n"
        "def g() -> None:\n"
        "    from pkg import top\n",
    )
    write(tmp_path, "pkg/core/y.py", "import collections.abc\n" + "x = 1\n" * 400)

    assert cycle_problems(tmp_path, "pkg") == [
        "pkg.sub.b -> pkg.top -> pkg.sub.b\n"
        "    pkg/sub/b.py:2 imports pkg.top\n"
        "    pkg/top.py:3 imports pkg.sub.b"
    ]
    graph = import_graph(package_modules(tmp_path, "pkg"))
    assert graph["pkg.sub.c"] == {"pkg.sub.b": 1}  # not pkg.sub: b is a submodule
    assert graph["pkg"] == {"pkg.top": 1}
    assert core_problems(tmp_path, "pkg", "pkg.core") == [
        "pkg/core/x.py:4 imports aiohttp.web",
        "pkg/core/x.py:6 imports pkg.top",
    ]
    assert size_problems(tmp_path, "pkg", 400) == ["pkg/core/y.py: 401 lines (limit 400)"]
