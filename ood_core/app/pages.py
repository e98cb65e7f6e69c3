"""The app's pages, in one list: the router registers them (``st.navigation``) and the pages link
to each other by url path through :func:`page_file`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"


@dataclasses.dataclass(frozen=True)
class PageEntry:
    file: str  # in app_pages/
    title: str
    url_path: str  # "" for the default page, served at "/"


PAGES = [
    PageEntry("home.py", "Home", ""),
    PageEntry("models.py", "Models", "models"),
    PageEntry("lessons.py", "Lessons", "lessons"),
    PageEntry("jacobian.py", "Jacobian norms", "jacobian"),
    PageEntry("collapse.py", "Neural collapse & subspaces", "collapse"),
    PageEntry("features.py", "Feature magnitudes", "features"),
    PageEntry("energy.py", "Energy scores", "energy"),
    PageEntry("roc.py", "ROC & metrics", "roc"),
    PageEntry("embeddings.py", "Embeddings", "embeddings"),
    PageEntry("compare.py", "Compare methods", "compare"),
    PageEntry("claims.py", "Claims", "claims"),
]
BY_URL = {p.url_path or "home": p for p in PAGES}


def page_file(url_path: str) -> str:
    """The script of the page served at ``url_path`` ("home" for the default page), as
    ``st.page_link`` and ``AppTest.switch_page`` take it."""
    try:
        return str(PAGES_DIR / BY_URL[url_path].file)
    except KeyError:
        raise ValueError(f"no app page at {url_path!r}; pages: {', '.join(BY_URL)}") from None
