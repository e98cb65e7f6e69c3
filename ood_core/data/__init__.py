"""Datasets: the benchmark container, the embedded and real datasets, and user OOD sets.

Modules, bottom to top (each imports only those before it):

* :mod:`.benchmark`: :class:`Split`, :class:`Benchmark` (``.inputs()``: set name -> inputs),
  the open-set protocol (known classes) and :func:`open_set_splits`;
* :mod:`.limits`: the size limits on user data (bytes, samples, pixels per image) and their checks;
* :mod:`.convert`: conversion of arrays and images to the ID format (shape, range, resize);
* :mod:`.embedded`: digits, toy2d, digit-canvases, the generated and far-real OOD sets and the
  training outliers (offline, seeded);
* :mod:`.images`: the one image decoder (regular files, pixel limit, EXIF orientation) and the
  bounded, checked walk of image folders;
* :mod:`.user`: user files and uploads (:func:`load_user_ood`) and their size caps;
* :mod:`.real`: the real datasets on disk (torchvision formats) and the OpenOOD-style presets;
* :mod:`.registry`: :data:`DATASETS`, :func:`register_dataset`, :func:`load_benchmark`.

The names below are the public API; ``from ood_core.data import X`` is the way to use them.
"""
from .benchmark import (DEFAULT_KNOWN, FAR_REAL, FAR_SYNTHETIC, NEAR, SPLIT_NAMES, Benchmark, Split, check_known,
                        open_set_splits, parse_known)
from .convert import IMAGE_SUFFIXES, convert_to_id_format
from .embedded import (CANVAS_SIZES, CANVAS_SLOTS, IMAGE_OOD_SETS, N_GENERATED, N_TRAIN_OUTLIERS, REAL_OOD_SETS,
                       SPLIT_FRACTIONS, TRAIN_OUTLIERS, RealOODSet, generate_ood, load_digit_canvases_benchmark,
                       load_digits_benchmark, load_toy2d_benchmark, real_crop_to_input, real_ood, training_outliers)
from .real import LAYOUTS, PRESETS
from .registry import (DATASET_DESCRIPTIONS, DATASETS, IMAGE_FOLDER_PREFIX, load_benchmark, load_benchmark_from_spec,
                       register_dataset)
from .user import (MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV, MAX_USER_BYTES, MAX_USER_BYTES_ENV, MAX_USER_SAMPLES,
                   MAX_USER_SAMPLES_ENV, image_pixel_limit, load_user_ood, user_limits)

__all__ = [
    "DEFAULT_KNOWN", "FAR_REAL", "FAR_SYNTHETIC", "NEAR", "SPLIT_NAMES", "Benchmark", "Split", "check_known",
    "open_set_splits", "parse_known", "IMAGE_SUFFIXES", "convert_to_id_format", "CANVAS_SIZES", "CANVAS_SLOTS", "IMAGE_OOD_SETS",
    "N_GENERATED", "N_TRAIN_OUTLIERS", "REAL_OOD_SETS", "SPLIT_FRACTIONS", "TRAIN_OUTLIERS", "RealOODSet",
    "generate_ood", "load_digit_canvases_benchmark", "load_digits_benchmark", "load_toy2d_benchmark",
    "real_crop_to_input", "real_ood", "training_outliers", "LAYOUTS", "PRESETS", "DATASET_DESCRIPTIONS", "DATASETS",
    "IMAGE_FOLDER_PREFIX", "load_benchmark", "load_benchmark_from_spec", "register_dataset", "MAX_USER_BYTES", "MAX_USER_BYTES_ENV",
    "MAX_USER_SAMPLES", "MAX_USER_SAMPLES_ENV", "load_user_ood", "user_limits", "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_PIXELS_ENV", "image_pixel_limit",
]
