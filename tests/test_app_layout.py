"""The app's layout rules, checked on the source (ast, nothing imported or run): pages hold
widgets and calls only, streamlit and plotly stay inside ood_core/app, the core never imports
the app, and nothing edits sys.path."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "ood_core" / "app"
PAGES = sorted((APP / "app_pages").glob("*.py"))
CORE = sorted(p for p in (ROOT / "ood_core").rglob("*.py") if APP not in p.parents)
UI_LIBS = ("streamlit", "plotly", "vl_convert")
# pathlib: pages turn checkpoint paths into file names for labels and download names
PAGE_ALLOWED = ("__future__", "pathlib", "streamlit", "ood_core.app")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path``, nested ones included."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [(node.lineno, f"{module}.{a.name}" if node.module is None else module) for a in node.names]
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_pages_are_found():
    assert len(PAGES) >= 9 and (APP / "main.py").is_file()
    assert not (APP / "pages").exists() and not (ROOT / "pages").exists()  # legacy multipage mode


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_import_only_streamlit_and_the_app(page):
    bad = [f"{page.name}:{line} {m}" for line, m in _imports(page)
           if not any(_within(m, ok) for ok in PAGE_ALLOWED)]
    assert not bad, f"pages import only streamlit and ood_core.app (computation goes there): {bad}"


def test_streamlit_and_plotly_only_inside_the_app():
    bad = [f"{p.relative_to(ROOT)}:{line} {m}" for p in CORE + [ROOT / "app.py"] for line, m in _imports(p)
           if any(_within(m, lib) for lib in UI_LIBS)]
    assert not bad, bad


def test_the_core_does_not_import_the_app():
    bad = [f"{p.relative_to(ROOT)}:{line} {m}" for p in CORE for line, m in _imports(p) if _within(m, "ood_core.app")]
    assert not bad, bad


def test_nothing_edits_sys_path():
    files = [ROOT / "app.py", *(ROOT / "ood_core").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "tests").glob("*.py")]  # the package is installed (editable for a checkout)
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in files for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    assert not bad, bad
