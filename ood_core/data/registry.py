"""The dataset registry: every benchmark name, its builder and its description, in one place.

:data:`DATASETS` maps a name to its builder ``(known, split_seed, ood_seed[, data_root]) ->
Benchmark`` and :data:`DATASET_DESCRIPTIONS` the same names to one line for ``list`` and the
app; :func:`register_dataset` is the only writer of both, so they always hold the same names.
The embedded datasets and the real-data presets are registered below; ``imagefolder:PATH``
names are built on the fly (the path is part of the name).
"""
from __future__ import annotations

from typing import Callable

from ..checks import seed as check_seed, whole
from ..errors import DataError, unknown
from . import embedded, real
from .benchmark import Benchmark

DATASETS: dict[str, Callable[..., Benchmark]] = {}
DATASET_DESCRIPTIONS: dict[str, str] = {}
_TAKES_DATA_ROOT: set[str] = set()  # builders that read files under a data root (and may download them)
IMAGE_FOLDER_PREFIX = "imagefolder:"


def register_dataset(name: str, builder: Callable[..., Benchmark], description: str, *,
                     takes_data_root: bool = False, replace: bool = False) -> None:
    """Make ``name`` loadable by :func:`load_benchmark` and listed by ``list`` and the app.

    ``builder(known=None, split_seed=0, ood_seed=0)`` returns the :class:`Benchmark`; with
    ``takes_data_root`` it also takes ``data_root`` (the folder of its files, None = the
    default, see :func:`ood_core.paths.data_root`) and ``download`` (fetch missing files;
    None = :func:`ood_core.paths.download_enabled`). A name already registered is refused
    unless ``replace``.
    """
    if name in DATASETS and not replace:
        raise DataError(f"dataset {name!r} is already registered; pass replace=True to replace it")
    if name.startswith(IMAGE_FOLDER_PREFIX):
        raise DataError(f"dataset names starting with {IMAGE_FOLDER_PREFIX!r} are image folders, built from the path")
    DATASETS[name] = builder
    DATASET_DESCRIPTIONS[name] = description
    _TAKES_DATA_ROOT.discard(name)
    if takes_data_root:
        _TAKES_DATA_ROOT.add(name)


def load_benchmark(name: str, known=None, split_seed: int = 0, ood_seed: int = 0, data_root=None,
                   download: bool | None = None, preprocess: dict | None = None) -> Benchmark:
    """Load a benchmark by name (see ``DATASETS``), or ``imagefolder:PATH`` (see :mod:`ood_core.data.real`).

    ``data_root``: the folder of the real datasets (``cifar10``, ``voc2007``, ...); None reads
    ``$OOD_DATA_ROOT``. ``download``: let torchvision fetch missing real datasets into it
    (needs internet); None reads ``$OOD_DATA_DOWNLOAD``. Embedded datasets and image folders
    ignore both. ``preprocess`` (``{"resize": R, "crop": C}``) sizes the images of an
    ``imagefolder:`` benchmark (an imported model's input size); other datasets ignore it.
    """
    if not isinstance(name, str):
        raise DataError(f"a dataset name must be text, got {name!r}")
    split_seed = check_seed(split_seed, "split_seed", error=DataError)
    ood_seed = check_seed(ood_seed, "ood_seed", error=DataError)
    if known is not None:
        if isinstance(known, (str, bytes)) or not hasattr(known, "__iter__"):
            raise DataError(f"known classes must be a list of class indices, got {known!r}")
        known = tuple(whole(k, "each known class", error=DataError) for k in known)
    if name.startswith(IMAGE_FOLDER_PREFIX):
        return real.build_image_folder(name, known=known, split_seed=split_seed, ood_seed=ood_seed,
                                       preprocess=preprocess)
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    root = {"data_root": data_root, "download": download} if name in _TAKES_DATA_ROOT else {}
    return DATASETS[name](known=known, split_seed=split_seed, ood_seed=ood_seed, **root)


def load_benchmark_from_spec(spec, data_root=None, download: bool | None = None) -> Benchmark:
    """Rebuild the exact benchmark described by :meth:`Benchmark.spec` (as stored in checkpoints);
    ``data_root`` and ``download`` as in :func:`load_benchmark`."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise DataError("the checkpoint metadata does not say which dataset the model was trained on")
    return load_benchmark(spec["name"], known=spec.get("known"), split_seed=spec.get("split_seed", 0),
                          ood_seed=spec.get("ood_seed", 0), data_root=data_root, download=download,
                          preprocess=spec.get("preprocess"))


register_dataset("digits", embedded.load_digits_benchmark,
                 "sklearn digits 8x8, open-set: known classes ID, others near-OOD; 3 far-real sets (crops of "
                 "scikit-image photos, textures, faces) and 5 far-synthetic generated sets")
register_dataset("toy2d", embedded.load_toy2d_benchmark,
                 "4 Gaussian classes in 2-D; far-synthetic OOD: ring around them, uniform box")
register_dataset("digit-canvases", embedded.load_digit_canvases_benchmark,
                 "multi-label 16x16 canvases of 1-3 known digits; OOD: unknown-digit canvases (near), "
                 "3 far-real and 5 far-synthetic sets")
for _preset in real.PRESETS:
    register_dataset(_preset, real.preset_builder(_preset), real.describe_preset(_preset), takes_data_root=True)
