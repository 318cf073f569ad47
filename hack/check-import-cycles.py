#!/usr/bin/env python3
"""Fail if the project's packages import each other in a cycle.

Usage: ``python hack/check-import-cycles.py [PACKAGE_DIR ...]`` (default: ``memoria``,
``operator/memoria_operator``, ``kubectl_memoria`` and ``testbed``). Each directory is a
package; its parent directory is where imports resolve from. Exits 1 and prints every cycle
found, 0 if there is none.

Only imports that run when a module is loaded count: those at module level, in class bodies and
under ``try``/``with``/``if``, but not those inside functions (run later, on first call) nor those
under ``if TYPE_CHECKING:`` (never run). Importing ``a.b.c`` also loads the packages ``a`` and
``a.b``, so the importer depends on them too, unless it lives inside them (a package is always
loaded before its own modules). Imports of anything outside the given packages are ignored.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGES = ("memoria", "operator/memoria_operator", "kubectl_memoria", "testbed")


def module_files(package_dir: Path) -> Iterator[tuple[str, Path, bool]]:
    """(dotted name, file, is a package) for every module under ``package_dir``."""
    base = package_dir.parent
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        yield ".".join(parts), path, is_package


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def load_time_imports(body: Iterable[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module with this body is loaded."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from load_time_imports(node.body)
            yield from load_time_imports(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody):
                yield from load_time_imports(block)
            for handler in node.handlers:
                yield from load_time_imports(handler.body)
        elif isinstance(node, ast.With | ast.AsyncWith | ast.ClassDef):
            yield from load_time_imports(node.body)
        # function bodies run later, on call: their imports cannot make a load-time cycle


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class Graph:
    def __init__(self, package_dirs: Iterable[Path]) -> None:
        self.files: dict[str, tuple[Path, bool]] = {}
        for package_dir in package_dirs:
            for name, path, is_package in module_files(package_dir):
                self.files[name] = (path, is_package)
        self.edges: dict[str, set[str]] = {name: set() for name in self.files}
        for name in self.files:
            self._scan(name)

    def _known(self, dotted: str) -> str | None:
        """The module itself, or the closest known package containing it (``from m import X``
        of a name in a package that has become a package: its ``__init__``)."""
        while dotted:
            if dotted in self.files:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    def _add(self, importer: str, target: str) -> None:
        own = set(_ancestors(importer))
        if target != importer:
            self.edges[importer].add(target)
        # loading a module loads its packages first; the importer's own are loaded already
        for package in _ancestors(target):
            if package in self.files and package not in own and package != importer:
                self.edges[importer].add(package)

    def _base(self, importer: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        is_package = self.files[importer][1]
        parts = importer.split(".") if is_package else importer.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, *([node.module] if node.module else [])])

    def _scan(self, importer: str) -> None:
        path = self.files[importer][0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in load_time_imports(tree.body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (target := self._known(alias.name)) is not None:
                        self._add(importer, target)
                continue
            base = self._base(importer, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in self.files else self._known(base)
                if target is not None:
                    self._add(importer, target)

    def cycles(self) -> list[list[str]]:
        """One cycle through each strongly connected component that has one."""
        found = []
        for component in _components(self.edges):
            members = set(component)
            if len(members) > 1 or component[0] in self.edges[component[0]]:
                found.append(_cycle_in(min(members), members, self.edges))
        return sorted(found)


def _components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to hit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result


def _cycle_in(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from ``start`` back to itself inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(edges[node] & members):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is in a component but on no cycle")


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or [REPO / p for p in DEFAULT_PACKAGES]
    missing = [str(d) for d in dirs if not (d / "__init__.py").is_file()]
    if missing:
        print(f"not a package directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    graph = Graph(dirs)
    cycles = graph.cycles()
    for cycle in cycles:
        print("import cycle: " + " -> ".join(cycle))
    if cycles:
        print(
            f"{len(cycles)} import cycle(s) among {len(graph.files)} modules; break each by "
            "moving the shared names to a module both sides can import",
            file=sys.stderr,
        )
        return 1
    print(f"no import cycles among {len(graph.files)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
