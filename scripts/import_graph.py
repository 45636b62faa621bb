"""The package's import graph: layers, arrows, and imports hidden inside functions.

``python scripts/import_graph.py`` prints every module with its layer (1 = imports no other tformer
module; otherwise one more than the highest layer it imports), the number of import arrows, and
any ``import tformer...`` written inside a function. ``tests/test_layout.py`` holds the package to
at most 7 layers and no such hidden imports.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tformer"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """``{module: modules it imports}`` and the function-level tformer imports found."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    hidden = []
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tformer"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("tformer")]
            else:
                continue
            edges[mod].update(t for t in targets if t in files and t != mod)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    name = getattr(node, "module", None) or (node.names[0].name if isinstance(node, ast.Import) else "")
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and str(name).startswith("tformer"):
                        hidden.append(f"{mod}.{fn.name}: {ast.unparse(node)}")
    return edges, hidden


def layers(edges: dict[str, set[str]]) -> dict[str, int]:
    @cache
    def layer(mod: str, stack: tuple[str, ...] = ()) -> int:
        if mod in stack:
            raise ValueError(f"import cycle: {' -> '.join(stack + (mod,))}")
        return 1 + max((layer(d, stack + (mod,)) for d in edges[mod]), default=0)

    return {m: layer(m) for m in edges}


def main() -> int:
    edges, hidden = graph()
    depth = layers(edges)
    for mod in sorted(edges, key=lambda m: (depth[m], m)):
        print(f"{depth[mod]}  {mod}  <- {', '.join(sorted(edges[mod])) or '-'}")
    print(f"\n{len(edges)} modules on {max(depth.values())} layers, {sum(map(len, edges.values()))} import arrows")
    for line in hidden:
        print("import inside a function:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
