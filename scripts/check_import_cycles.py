"""Fail when any two modules of authsvc import each other, directly or through others.

import-linter (``lint-imports``, run by ``make lint``) checks the layers; its
``acyclic_siblings`` contract compares sibling packages, not modules, and does not see a
package's ``__init__`` and its own modules importing each other. This script does: it builds
the same module graph with grimp (imports inside functions and under ``TYPE_CHECKING``
count), prints every circle (a strongly connected component) and exits with status 1.

Run from the repository root: ``python scripts/check_import_cycles.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grimp

PACKAGE = "authsvc"


def circles(graph: grimp.ImportGraph) -> Iterator[list[str]]:
    """Yield each set of modules that import one another (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        yield sorted(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on_stack:
                low[module] = min(low[module], index[child])


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    found = list(circles(graph))
    for component in found:
        members = set(component)
        print(f"import circle of {len(component)} modules:")
        for importer in component:
            for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
                lines = graph.get_import_details(importer=importer, imported=imported)
                where = ", ".join(str(line["line_number"]) for line in lines)
                print(f"  {importer} -> {imported} (line {where})")
    if found:
        return 1
    print(f"no import circles in {PACKAGE} ({len(graph.modules)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
