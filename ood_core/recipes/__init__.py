"""Training recipes and their scores, one module per published method.

Each module registers its methods (``ood_core.methods.register_method``) and scores
(``ood_core.scores.register_score``) at import; every module of this package is imported
here, so adding a file is enough to add a method.
"""
import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")
