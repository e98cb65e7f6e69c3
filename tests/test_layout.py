"""The package's layout rules, read from the sources with ``ast`` (nothing is imported):

* only the app code (``ood_core/app/`` and, until it moves there, ``ood_core/app_support.py``)
  imports streamlit or plotly, and the core never imports the app code;
* the module-level imports between ``ood_core`` modules form no cycle (imports inside
  functions are deliberate lazy imports and are left out);
* in the core (everything but the app code) not even the lazy imports close a cycle: a lazy
  import that does is a dependency hidden from the module-level graph (as ``data`` <->
  ``real_data`` and ``evaluate`` -> ``feature_cache`` -> ``projection`` -> ``evaluate`` were).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ood_core"
UI_LIBRARIES = ("streamlit", "plotly", "vl_convert")
APP_MODULES = ("ood_core.app", "ood_core.app_support")  # a module and everything below it


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _is_app(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in APP_MODULES)


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The absolute names an import statement of ``module`` reads (``from p import m``: ``p.m``
    when ``m`` is a submodule, else ``p``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [f"{target}.{a.name}" for a in node.names]
    return [n if n in MODULES else target for n in names]


def _top_level_imports(tree: ast.AST):
    """Import statements run when the module is imported: everywhere except inside functions."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _trees() -> dict[str, ast.AST]:
    return {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def test_the_layout_sees_the_package():
    assert {"ood_core", "ood_core.data", "ood_core.data.registry", "ood_core.paths", "ood_core.evaluate"} <= set(MODULES)
    assert "ood_core.data.benchmark" in _import_graph()["ood_core.data.embedded"]


def test_only_the_app_imports_streamlit_or_plotly():
    offenders = []
    for name, tree in _trees().items():
        if _is_app(name):
            continue
        for node in ast.walk(tree):  # anywhere, lazy imports included
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(name, node):
                    if target.split(".")[0] in UI_LIBRARIES:
                        offenders.append(f"{name} imports {target} (line {node.lineno})")
                    elif _is_app(target):
                        offenders.append(f"{name} imports the app code {target} (line {node.lineno})")
    assert not offenders, "only ood_core/app may import streamlit/plotly or the app code:\n" + "\n".join(offenders)


def _import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the ood_core modules it imports: at module level, or anywhere with ``lazy``.

    With ``lazy``, imports of the top package ``ood_core`` itself (``from . import __version__``)
    are left out: its ``__init__`` imports every public module, so any such import would count
    as a cycle although it only runs after the package is loaded. So is the app code."""
    graph = {}
    for name, tree in _trees().items():
        if lazy and _is_app(name):
            continue
        targets = set()
        nodes = (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))) if lazy \
            else _top_level_imports(tree)
        for node in nodes:
            for target in _imported(name, node):
                # keep ood_core modules; a name bound in a package's __init__ is an edge to that package
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if target.startswith("ood_core") and target != name and not (lazy and target == "ood_core"):
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_module_imports_have_no_cycle():
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_core_imports_have_no_cycle_even_lazily():
    cycle = _cycle(_import_graph(lazy=True))
    assert cycle is None, "import cycle through a lazy import: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
