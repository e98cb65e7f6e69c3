"""Where things live on disk: the cache folder and the real-data root (the bottom layer).

Every folder the library reads from its environment is named here, so the modules above
(data, feature cache, projection, app) ask one place and import nothing from each other to
find a folder:

* the cache (features, 2-D maps, numba and matplotlib caches, uploads):
  ``$OOD_CACHE_DIR``, else ``~/.cache/ood-lab``;
* the data root of the real datasets (cifar10, voc2007, ...): an explicit ``root``
  argument, else ``$OOD_DATA_ROOT``;
* whether torchvision may download missing real datasets: ``$OOD_DATA_DOWNLOAD``;
* the shipped checkpoints of the embedded benchmark and the stored benchmark results, which the
  package carries as data (``ood_core/shipped/``; the checkout's ``checkpoints/`` and
  ``results/`` are links to them, so ``pip install .`` serves the same app as the checkout);
* the caches of tools the library drives (numba for UMAP, matplotlib for captum):
  :func:`point_tool_cache` puts them under the cache folder unless the user chose one.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import DataNotFound

CACHE_DIR_ENV = "OOD_CACHE_DIR"
DATA_ROOT_ENV = "OOD_DATA_ROOT"
DOWNLOAD_ENV = "OOD_DATA_DOWNLOAD"

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_CHECKPOINTS = SHIPPED_DIR / "checkpoints"  # one per method, seed 0: `make checkpoints`
SHIPPED_RESULTS = SHIPPED_DIR / "results"  # compare.json (`make bench`), mechanisms.json


def default_cache_dir() -> Path:
    """The conventional cache folder: ``$OOD_CACHE_DIR`` if set, else ``~/.cache/ood-lab``.

    The library never caches on its own; callers (app, CLI) pass this folder (or a
    sub-folder) to the functions that take a cache.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ood-lab"


def point_tool_cache(env: str, name: str) -> str:
    """Point a tool's cache variable ``env`` at ``<default_cache_dir()>/<name>``, unless it is
    already set (the user's choice wins), creating the folder; returns the folder in use, or ""
    when it cannot be created (the tool then keeps its own default rather than fail)."""
    current = os.environ.get(env, "")
    if current.strip():
        return current
    folder = default_cache_dir() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return ""
    os.environ[env] = str(folder)
    return str(folder)


def data_root(root=None) -> Path:
    """The data root: ``root`` if given, else ``$OOD_DATA_ROOT``, else a :class:`DataNotFound`."""
    root = root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DataNotFound(f"real datasets need a data root: pass --data-root DIR or set ${DATA_ROOT_ENV}")
    return Path(root).expanduser()


def download_enabled(download: bool | None = None) -> bool:
    """Whether torchvision may fetch missing real datasets: ``download`` if given, else
    ``$OOD_DATA_DOWNLOAD`` (1, true or yes)."""
    if download is not None:
        return bool(download)
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")
