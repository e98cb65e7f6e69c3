"""Moved to :mod:`ood_core.data.real` (the real datasets) and :mod:`ood_core.paths` (the data root).

Kept only so that imports written before the data package keep working (``app.py``,
``ood_core/app_support.py`` and ``tests/test_app_real_data.py`` import from here); new code
imports from :mod:`ood_core.data.real` or :mod:`ood_core.paths`.
"""
from .data.real import LAYOUTS, PRESETS, dataset_present, preset_status  # noqa: F401
from .paths import DATA_ROOT_ENV, DOWNLOAD_ENV, data_root, download_enabled  # noqa: F401
