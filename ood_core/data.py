"""The embedded benchmark: data that ships with installed packages, plus OOD sets made in code.

Everything here works offline and is seeded, so every run sees the same samples.

ID datasets (``DATASETS``)
  * ``digits``: scikit-learn's 1,797 handwritten digits, 8x8 grey images scaled to [0, 1],
    split train/val/test 60/20/20, stratified, with a fixed split seed. Open-set protocol:
    the *known* classes (default 0-5) are ID; the test images of the other classes form
    the near-OOD set ``unknown``.
  * ``toy2d``: four 2-D Gaussian classes on a circle (a teaching set whose input plane can
    be drawn). OOD (group ``far-synthetic``): ``ring`` (an annulus around the classes) and
    ``uniform-box``.
  * ``digit-canvases``: multi-label. A 16x16 canvas is a 2x2 grid of 8x8 slots holding
    1-3 digits of known classes; the target is the set of labels present. OOD canvases
    (``unknown``) hold 1-3 digits of unknown classes only. Built from the digit splits, so
    no test digit is ever seen in training.

OOD groups: ``near`` (``unknown``), ``far-real`` and ``far-synthetic``; reports average
each group on its own, so real and generated far-OOD are never merged into one mean.

Far-real OOD sets (``REAL_OOD_SETS``, group ``far-real``) for the grey image datasets, cut
from the images shipped inside the scikit-image wheel (read offline, once per process):
  * ``real-photos``: camera, astronaut, coffee, chelsea, rocket, motorcycle (left view),
    hubble_deep_field.
  * ``real-textures``: brick, grass, gravel.
  * ``real-faces``: the 100 face patches (25x25) of ``lfw_subset``.
Each sample is a seeded square crop (a uniformly drawn image, side 1/8 to 1/2 of its
shorter side, 0.6 to 1 for the small faces, position uniform) converted to the ID format:
RGB -> grey by luminance, area-resized to H x W (the side is a multiple of H, so each pixel
is the mean of a k x k block) and min-max stretched to [0, 1] per image, as every digit
spans 0 (background) to about 1 (stroke). Crops whose block means span less than 0.1 are
redrawn. 300 per set, one RNG stream per set from ``ood_seed``.

Far-synthetic OOD sets for image datasets (``IMAGE_OOD_SETS``, group ``far-synthetic``),
same shape and [0, 1] range as the ID images:
  * ``uniform-noise``: i.i.d. U(0, 1) pixels.
  * ``gaussian-noise``: N(0.5, 0.25^2) pixels, clipped to [0, 1].
  * ``constant``: every pixel of an image equal to one level drawn from U(0, 1).
  * ``blobs``: 1-3 smooth Gaussian bumps of random centre and width, scaled to peak 1.
  * ``textures``: sinusoidal gratings (random frequency, orientation and phase) and
    checkerboards (random cell size), half each.

Training outliers (``TRAIN_OUTLIERS``, for outlier-exposure recipes; never an evaluation set):
  * ``scrambled-digits``: known-class *training* images cut into square blocks (side 2,
    H/4 or H/2, drawn per image) whose positions are randomly permuted; every evaluation
    set (``unknown``, the far-real and the generated sets above) stays held out.

User OOD sets come from a ``.npy``/``.npz`` array or a folder of images and are converted
to the ID format by :func:`load_user_ood` (see its docstring for the rules).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import DataError, unknown

DEFAULT_KNOWN = (0, 1, 2, 3, 4, 5)
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
N_GENERATED = 300  # samples per generated or far-real OOD set
# OOD groups of the embedded benchmarks (real-data presets use "near" / "far")
NEAR, FAR_REAL, FAR_SYNTHETIC = "near", "far-real", "far-synthetic"


@dataclasses.dataclass
class Split:
    """Inputs and targets of one split. ``y`` is (N,) int64 or (N, K) float32 multi-hot."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass
class Benchmark:
    """An ID dataset with its splits and its named OOD sets.

    ``ood`` maps a set name to an input tensor in the ID format; ``ood_groups`` gives each
    set's group: ``near``, ``far-real`` or ``far-synthetic`` on the embedded benchmarks,
    ``near`` or ``far`` on the real-data presets.
    """

    name: str
    task: str  # "multiclass" or "multilabel"
    input_shape: tuple[int, ...]
    known: tuple[int, ...]
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    ood: dict[str, torch.Tensor]
    ood_groups: dict[str, str]
    split_seed: int = 0
    ood_seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def spec(self) -> dict:
        """What identifies this benchmark, as stored in checkpoint metadata."""
        return {"name": self.name, "known": list(self.known), "task": self.task,
                "input_shape": list(self.input_shape), "class_names": list(self.class_names),
                "split_seed": self.split_seed, "ood_seed": self.ood_seed}


# --------------------------------------------------------------------------- generators
def _uniform_noise(n, shape, rng):
    return rng.random((n, *shape))


def _gaussian_noise(n, shape, rng):
    return np.clip(rng.normal(0.5, 0.25, (n, *shape)), 0.0, 1.0)


def _constant(n, shape, rng):
    return np.broadcast_to(rng.random((n,) + (1,) * len(shape)), (n, *shape)).copy()


def _grid(shape):
    h, w = shape[-2:]
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    return yy, xx


def _blobs(n, shape, rng):
    yy, xx = _grid(shape)
    out = np.zeros((n, *shape))
    for i in range(n):
        img = np.zeros_like(yy)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.random(2)
            sigma = rng.uniform(0.12, 0.35)
            img += rng.uniform(0.4, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        out[i] = img / img.max()
    return out


def _textures(n, shape, rng):
    yy, xx = _grid(shape)
    h, w = shape[-2:]
    out = np.zeros((n, *shape))
    for i in range(n):
        if i % 2 == 0:  # grating
            theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(1.0, 4.0), rng.uniform(0, 2 * np.pi)
            img = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        else:  # checkerboard
            cell = int(rng.integers(1, max(2, min(h, w) // 2) + 1))
            r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            img = (((r // cell) + (c // cell)) % 2).astype(float)
            if rng.random() < 0.5:
                img = 1.0 - img
        out[i] = img
    return out


IMAGE_OOD_SETS: dict[str, Callable] = {
    "uniform-noise": _uniform_noise,
    "gaussian-noise": _gaussian_noise,
    "constant": _constant,
    "blobs": _blobs,
    "textures": _textures,
}


def generate_ood(name: str, n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Generate ``n`` samples of the far-OOD family ``name`` with image ``shape`` (C, H, W)."""
    if name not in IMAGE_OOD_SETS:
        raise unknown("generated OOD set", name, IMAGE_OOD_SETS)
    # one stream per family: adding a family never changes another's samples
    rng = np.random.default_rng([seed, sorted(IMAGE_OOD_SETS).index(name)])
    return torch.as_tensor(IMAGE_OOD_SETS[name](n, tuple(shape), rng), dtype=torch.float32)


# --------------------------------------------------------------------------- real far-OOD crops
@dataclasses.dataclass(frozen=True)
class RealOODSet:
    """A far-OOD set cut from photographs shipped inside the scikit-image wheel.

    ``sources``: keys of :data:`REAL_SOURCES`; every image they hold is equally likely.
    ``crop``: the crop side as a fraction (lo, hi) of the image's shorter side.
    """

    sources: tuple[str, ...]
    crop: tuple[float, float]


# skimage.data loaders that read files inside the wheel (no pooch download); each returns
# the images it holds, so a source may give one photograph or a stack of patches
REAL_SOURCES: dict[str, Callable] = {
    "camera": lambda d: [d.camera()],
    "astronaut": lambda d: [d.astronaut()],
    "coffee": lambda d: [d.coffee()],
    "chelsea": lambda d: [d.chelsea()],
    "rocket": lambda d: [d.rocket()],
    "motorcycle": lambda d: [d.stereo_motorcycle()[0]],  # the left view
    "hubble_deep_field": lambda d: [d.hubble_deep_field()],
    "brick": lambda d: [d.brick()],
    "grass": lambda d: [d.grass()],
    "gravel": lambda d: [d.gravel()],
    "lfw_faces": lambda d: list(d.lfw_subset()[:100]),  # the first 100 of 200 are faces, the rest background
}

REAL_OOD_SETS: dict[str, RealOODSet] = {
    "real-photos": RealOODSet(("camera", "astronaut", "coffee", "chelsea", "rocket", "motorcycle",
                               "hubble_deep_field"), (1 / 8, 1 / 2)),
    "real-textures": RealOODSet(("brick", "grass", "gravel"), (1 / 8, 1 / 2)),
    # a face patch is only 25x25: keep most of the face
    "real-faces": RealOODSet(("lfw_faces",), (0.6, 1.0)),
}
REAL_MIN_CONTRAST = 0.1  # a crop whose block means span less than this (of the full scale) is redrawn
_REAL_MAX_DRAWS = 100  # draws per sample before the set is declared impossible


@functools.lru_cache(maxsize=None)
def _real_source(name: str) -> tuple[np.ndarray, ...]:
    """The images of source ``name`` as read-only float32 grey (H, W) in [0, 1], loaded once per process."""
    try:
        import skimage.data
    except ImportError:
        raise DataError("the far-real OOD sets need scikit-image: pip install scikit-image==0.26.0") from None
    try:
        raw = REAL_SOURCES[name](skimage.data)
    except Exception as e:  # a build without the shipped image would try to download it
        raise DataError(f"scikit-image's shipped image {name!r} cannot be read ({e.__class__.__name__}: {e})") from None
    out = []
    for a in raw:
        a = np.asarray(a)
        a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
        if a.ndim == 3:  # RGB(A) -> grey with the luminance used for user data
            a = _as_nchw(a[None], 1, name)[0, 0].astype(np.float32)
        a.flags.writeable = False  # shared by every call through the cache
        out.append(a)
    return tuple(out)


def _block_means(image: np.ndarray, top: int, left: int, k: int, hw: tuple[int, int]) -> np.ndarray:
    """The (k*H, k*W) crop of a grey ``image`` at (top, left), area-resized to ``hw`` = (H, W).

    The crop is an exact multiple of the target, so the area resize is the mean of each k x k block.
    """
    h, w = hw
    crop = image[top:top + k * h, left:left + k * w]
    if crop.shape != (k * h, k * w):
        raise DataError(f"crop {k * h}x{k * w} at ({top}, {left}) leaves the {image.shape[0]}x{image.shape[1]} image")
    return crop.reshape(h, k, w, k).mean(axis=(1, 3), dtype=np.float64)


def _min_max(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def real_crop_to_input(image: np.ndarray, top: int, left: int, k: int, hw: tuple[int, int]) -> np.ndarray:
    """One far-real sample: :func:`_block_means` of the crop, min-max stretched to [0, 1].

    Min-max per crop matches the digits' appearance, whose every image spans 0 (background)
    to about 1 (stroke), so a dim photo patch is not told apart by its range alone.
    """
    return _min_max(_block_means(image, top, left, k, hw))


def _crop_factors(image_hw: tuple[int, int], hw: tuple[int, int], crop: tuple[float, float]) -> range:
    """Block sizes k whose (k*H, k*W) crop fits the image and has a side within ``crop`` of its shorter side."""
    fit = min(image_hw[0] // hw[0], image_hw[1] // hw[1])
    side, short = max(hw), min(image_hw)
    lo = max(1, math.ceil(crop[0] * short / side))
    hi = min(fit, math.floor(crop[1] * short / side))
    return range(lo, hi + 1) if lo <= hi else range(fit, fit + 1)  # a small image: the largest crop that fits


def real_ood(name: str, n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``n`` seeded crops of the far-real set ``name`` in the grey image format ``shape`` (1, H, W).

    Each sample draws an image of the set's sources uniformly, a block size k (uniform over
    those giving a crop side within the set's ``crop`` fractions) and a uniform position;
    crops whose block means span less than :data:`REAL_MIN_CONTRAST` are redrawn, since
    stretching a flat patch only amplifies compression noise. See :func:`real_crop_to_input`.
    """
    if name not in REAL_OOD_SETS:
        raise unknown("far-real OOD set", name, REAL_OOD_SETS)
    shape = tuple(shape)
    if len(shape) != 3 or shape[0] != 1:
        raise DataError(f"the far-real OOD sets are grey images (1, H, W); this dataset takes {shape}")
    spec, hw = REAL_OOD_SETS[name], shape[1:]
    images = [im for src in spec.sources for im in _real_source(src)]
    small = [im.shape for im in images if im.shape[0] < hw[0] or im.shape[1] < hw[1]]
    if small:
        raise DataError(f"far-real set {name!r}: source images of size {small[0]} are smaller than {hw}")
    # one stream per set, keyed by its name: adding a set never changes another's samples
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out = np.empty((n, 1, *hw), dtype=np.float32)
    for i in range(n):
        for _ in range(_REAL_MAX_DRAWS):
            im = images[rng.integers(len(images))]
            ks = _crop_factors(im.shape, hw, spec.crop)
            k = int(ks[rng.integers(len(ks))])
            top = int(rng.integers(im.shape[0] - k * hw[0] + 1))
            left = int(rng.integers(im.shape[1] - k * hw[1] + 1))
            block = _block_means(im, top, left, k, hw)
            if block.max() - block.min() >= REAL_MIN_CONTRAST:
                out[i, 0] = _min_max(block)
                break
        else:
            raise DataError(f"far-real set {name!r}: no crop with contrast >= {REAL_MIN_CONTRAST} "
                            f"in {_REAL_MAX_DRAWS} draws")
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- digits
def _parse_known(known, n_classes: int = 10) -> tuple[int, ...]:
    known = DEFAULT_KNOWN if known is None else tuple(sorted({int(k) for k in known}))
    if len(known) < 2:
        raise DataError(f"need at least 2 known classes, got {list(known)}")
    if len(known) == n_classes:
        raise DataError("every class is known, so there is no unknown-class OOD set; leave at least one out")
    bad = [k for k in known if not 0 <= k < n_classes]
    if bad:
        raise DataError(f"known classes must be in 0..{n_classes - 1}, got {bad}")
    return known


def open_set_splits(n: int, n_classes: int = 10, n_known: int = 6) -> list[tuple[int, ...]]:
    """The known classes of ``n`` open-set splits (Neal et al. 2018: random known/unknown splits,
    results averaged over them): split 0 is :data:`DEFAULT_KNOWN` (the app's default), split
    i > 0 a random ``n_known``-of-``n_classes`` choice drawn from the seed (2018, i), skipping any
    split already listed. Deterministic: the first k splits are the same for every n >= k."""
    if n < 1:
        raise DataError(f"need at least one open-set split, got {n}")
    splits = [tuple(DEFAULT_KNOWN)][:n]
    i = 1
    while len(splits) < n:
        rng = np.random.default_rng([2018, i])
        split = tuple(sorted(int(c) for c in rng.choice(n_classes, n_known, replace=False)))
        if split not in splits:
            splits.append(split)
        i += 1
    return splits


def parse_known(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"0,1,2"`` into a tuple of ints (CLI helper); None keeps the default."""
    if text is None or text == "":
        return None
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise DataError(f"--known takes comma-separated class indices like 0,1,2,3,4,5; got {text!r}") from None


def _digit_splits(split_seed: int):
    """Stratified 60/20/20 split of all 1,797 digits: dict split -> (x (N,1,8,8), y (N,))."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # raw range is 0..16
    y = d.target.astype(np.int64)
    idx = np.arange(y.size)
    tr, rest = train_test_split(idx, train_size=SPLIT_FRACTIONS[0], stratify=y, random_state=split_seed)
    va, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=split_seed)
    return {name: (x[i], y[i]) for name, i in (("train", tr), ("val", va), ("test", te))}


def _remap(y: np.ndarray, known: tuple[int, ...]) -> np.ndarray:
    lut = np.full(10, -1, dtype=np.int64)
    lut[list(known)] = np.arange(len(known))
    return lut[y]


def _add_generated(ood: dict, groups: dict, shape, seed: int) -> None:
    for name in IMAGE_OOD_SETS:
        ood[name] = generate_ood(name, N_GENERATED, shape, seed)
        groups[name] = FAR_SYNTHETIC


def _add_real(ood: dict, groups: dict, shape, seed: int) -> None:
    for name in REAL_OOD_SETS:
        ood[name] = real_ood(name, N_GENERATED, shape, seed)
        groups[name] = FAR_REAL


def load_digits_benchmark(known=None, split_seed: int = 0, ood_seed: int = 0) -> Benchmark:
    known = _parse_known(known)
    splits = _digit_splits(split_seed)
    parts = {}
    for name, (x, y) in splits.items():
        keep = np.isin(y, known)
        parts[name] = Split(torch.from_numpy(x[keep]), torch.from_numpy(_remap(y[keep], known)))
    x_test, y_test = splits["test"]
    ood = {"unknown": torch.from_numpy(x_test[~np.isin(y_test, known)])}
    groups = {"unknown": NEAR}
    _add_real(ood, groups, (1, 8, 8), ood_seed)
    _add_generated(ood, groups, (1, 8, 8), ood_seed)
    return Benchmark("digits", "multiclass", (1, 8, 8), known, [str(k) for k in known],
                     parts["train"], parts["val"], parts["test"], ood, groups, split_seed, ood_seed)


# --------------------------------------------------------------------------- toy2d
TOY_CLASSES = 4
TOY_RADIUS = 3.0
TOY_STD = 0.5


def load_toy2d_benchmark(known=None, split_seed: int = 0, ood_seed: int = 0) -> Benchmark:
    """Four Gaussian classes centred on a circle of radius 3 (std 0.5).

    OOD: ``ring`` (radius U(5, 7), any angle: the open space outside the classes) and
    ``uniform-box`` (uniform in [-7, 7]^2, keeping only points at least 1.5 from every
    class centre). ``known`` must be None: all four classes are ID.
    """
    if known is not None and tuple(sorted(known)) != tuple(range(TOY_CLASSES)):
        raise DataError("toy2d has no open-set protocol: all 4 classes are known; drop --known")
    rng = np.random.default_rng(split_seed)
    angles = 2 * np.pi * np.arange(TOY_CLASSES) / TOY_CLASSES + np.pi / 4
    centres = TOY_RADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)

    def sample(n_per_class):
        y = np.repeat(np.arange(TOY_CLASSES), n_per_class)
        x = centres[y] + TOY_STD * rng.normal(size=(y.size, 2))
        return Split(torch.tensor(x, dtype=torch.float32), torch.from_numpy(y))

    train, val, test = sample(300), sample(100), sample(100)
    orng = np.random.default_rng([ood_seed, 1])
    r, a = orng.uniform(5.0, 7.0, N_GENERATED), orng.uniform(0, 2 * np.pi, N_GENERATED)
    ring = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    box = orng.uniform(-7, 7, (N_GENERATED * 4, 2))
    far = np.min(np.linalg.norm(box[:, None] - centres[None], axis=2), axis=1) >= 1.5
    box = box[far][:N_GENERATED]
    ood = {"ring": torch.tensor(ring, dtype=torch.float32), "uniform-box": torch.tensor(box, dtype=torch.float32)}
    return Benchmark("toy2d", "multiclass", (2,), tuple(range(TOY_CLASSES)),
                     [f"class {k}" for k in range(TOY_CLASSES)], train, val, test, ood,
                     {"ring": FAR_SYNTHETIC, "uniform-box": FAR_SYNTHETIC}, split_seed, ood_seed)


# --------------------------------------------------------------------------- digit canvases
CANVAS_SLOTS = ((0, 0), (0, 8), (8, 0), (8, 8))
CANVAS_SIZES = {"train": 2000, "val": 500, "test": 500}


def _make_canvases(x: np.ndarray, y: np.ndarray, n: int, rng, classes) -> tuple[np.ndarray, np.ndarray]:
    """n canvases of 1-3 digits drawn from (x, y) restricted to `classes`; multi-hot over `classes`."""
    pool = np.flatnonzero(np.isin(y, classes))
    col = {c: i for i, c in enumerate(classes)}
    canv = np.zeros((n, 1, 16, 16), dtype=np.float32)
    tgt = np.zeros((n, len(classes)), dtype=np.float32)
    for i in range(n):
        k = rng.integers(1, 4)
        slots = rng.choice(4, size=k, replace=False)
        for s, j in zip(slots, rng.choice(pool, size=k, replace=False)):
            r, c = CANVAS_SLOTS[s]
            canv[i, 0, r:r + 8, c:c + 8] = x[j, 0]
            tgt[i, col[int(y[j])]] = 1.0
    return canv, tgt


def load_digit_canvases_benchmark(known=None, split_seed: int = 0, ood_seed: int = 0) -> Benchmark:
    known = _parse_known(known)
    splits = _digit_splits(split_seed)
    rng = np.random.default_rng([split_seed, 2])
    parts = {}
    for name, (x, y) in splits.items():
        c, t = _make_canvases(x, y, CANVAS_SIZES[name], rng, list(known))
        parts[name] = Split(torch.from_numpy(c), torch.from_numpy(t))
    x_test, y_test = splits["test"]
    unknown_classes = [k for k in range(10) if k not in known]
    orng = np.random.default_rng([ood_seed, 3])
    unk, _ = _make_canvases(x_test, y_test, N_GENERATED, orng, unknown_classes)
    ood = {"unknown": torch.from_numpy(unk)}
    groups = {"unknown": NEAR}
    _add_real(ood, groups, (1, 16, 16), ood_seed)
    _add_generated(ood, groups, (1, 16, 16), ood_seed)
    return Benchmark("digit-canvases", "multilabel", (1, 16, 16), known, [str(k) for k in known],
                     parts["train"], parts["val"], parts["test"], ood, groups, split_seed, ood_seed)


# --------------------------------------------------------------------------- registry
DATASETS: dict[str, Callable[..., Benchmark]] = {
    "digits": load_digits_benchmark,
    "toy2d": load_toy2d_benchmark,
    "digit-canvases": load_digit_canvases_benchmark,
}

DATASET_DESCRIPTIONS = {
    "digits": "sklearn digits 8x8, open-set: known classes ID, others near-OOD; 3 far-real sets (crops of "
              "scikit-image photos, textures, faces) and 5 far-synthetic generated sets",
    "toy2d": "4 Gaussian classes in 2-D; far-synthetic OOD: ring around them, uniform box",
    "digit-canvases": "multi-label 16x16 canvases of 1-3 known digits; OOD: unknown-digit canvases (near), "
                      "3 far-real and 5 far-synthetic sets",
}


def load_benchmark(name: str, known=None, split_seed: int = 0, ood_seed: int = 0, data_root=None) -> Benchmark:
    """Load a benchmark by name (see ``DATASETS``), or ``imagefolder:PATH`` (see ``ood_core.real_data``).

    ``data_root``: the folder of the real datasets (``cifar10``, ``voc2007``, ...); None reads
    ``$OOD_DATA_ROOT``. Embedded datasets and image folders ignore it.
    """
    if name.startswith("imagefolder:"):
        from .real_data import build_image_folder

        return build_image_folder(name, known=known, split_seed=split_seed, ood_seed=ood_seed)
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    from .real_data import PRESETS

    root = {"data_root": data_root} if name in PRESETS else {}
    return DATASETS[name](known=known, split_seed=split_seed, ood_seed=ood_seed, **root)


def _scrambled_images(bench: Benchmark, n: int, rng) -> np.ndarray:
    """Block-scrambled training images: ``n`` outliers made from ``bench.train`` only.

    Each outlier takes a random training image (C, H, W), picks a block side b uniformly
    from the admissible sides in {2, min(H,W)//4, min(H,W)//2} (those giving at least 2
    blocks per axis; 1-pixel blocks when none does), cuts the top-left (H//b*b, W//b*b)
    region into b x b blocks (all channels together) and permutes the blocks at random; a
    border that does not fill a block is left as it is. A draw that leaves the image
    unchanged is redrawn. Pixel values are only moved, so the range stays [0, 1]. Only the
    training split is read.
    """
    x = bench.train.x.detach().cpu().numpy() if isinstance(bench.train.x, torch.Tensor) else np.asarray(bench.train.x)
    if x.ndim != 4:
        raise DataError(f"block-scrambled outliers need image data (C, H, W); {bench.name} has inputs of shape "
                        f"{tuple(x.shape[1:])}")
    if x.shape[0] == 0:
        raise DataError(f"{bench.name} has no training images to scramble")
    h, w = x.shape[-2:]
    m = min(h, w)
    sides = sorted({s for s in (2, m // 4, m // 2) if s >= 1 and h // s >= 2 and w // s >= 2}) or [1]
    if h * w < 2:
        raise DataError(f"images of size {h}x{w} have a single pixel; there is nothing to scramble")
    c = x.shape[1]
    out = np.empty((n, *x.shape[1:]), dtype=np.float32)
    i, tries = 0, 0
    while i < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise DataError(f"{bench.name}: block-scrambling leaves the training images unchanged "
                            "(are they constant?); cannot make outliers from them")
        src = x[rng.integers(x.shape[0])].astype(np.float32)
        b = int(sides[rng.integers(len(sides))])
        nh, nw = h // b, w // b
        blocks = src[:, :nh * b, :nw * b].reshape(c, nh, b, nw, b).transpose(1, 3, 0, 2, 4).reshape(nh * nw, c, b, b)
        perm = rng.permutation(nh * nw)
        img = src.copy()
        img[:, :nh * b, :nw * b] = blocks[perm].reshape(nh, nw, c, b, b).transpose(2, 0, 3, 1, 4).reshape(c, nh * b, nw * b)
        if np.array_equal(img, src):  # identity permutation or identical blocks: not an outlier, draw again
            continue
        out[i] = img
        i += 1
    return out


# Auxiliary outliers for outlier-exposure training. They must never be one of the
# evaluation OOD sets; each entry maps a name to fn(bench, n, rng) -> tensor in the ID format.
TRAIN_OUTLIERS: dict[str, Callable] = {
    "scrambled-digits": _scrambled_images,
}
N_TRAIN_OUTLIERS = 1000


def training_outliers(name: str, bench: Benchmark, n: int = N_TRAIN_OUTLIERS, seed: int = 0) -> torch.Tensor:
    """``n`` auxiliary training outliers of family ``name`` for ``bench`` (seeded)."""
    if name not in TRAIN_OUTLIERS:
        raise unknown("training-outlier family", name, TRAIN_OUTLIERS)
    if name in bench.ood:
        raise DataError(f"training outliers {name!r} are also an evaluation OOD set of {bench.name}")
    rng = np.random.default_rng([seed, 7])
    return torch.as_tensor(TRAIN_OUTLIERS[name](bench, n, rng), dtype=torch.float32)


def load_benchmark_from_spec(spec, data_root=None) -> Benchmark:
    """Rebuild the exact benchmark described by :meth:`Benchmark.spec` (as stored in checkpoints);
    ``data_root`` as in :func:`load_benchmark`."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise DataError("the checkpoint metadata does not say which dataset the model was trained on")
    return load_benchmark(spec["name"], known=spec.get("known"), split_seed=spec.get("split_seed", 0),
                          ood_seed=spec.get("ood_seed", 0), data_root=data_root)


# --------------------------------------------------------------------------- user OOD sets
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

# Limits on a user OOD set (an array file or an image folder, CLI ``--ood-file`` and app
# uploads alike). The data are converted in batches of samples into a preallocated tensor of
# the model's input shape, so peak memory is the (small) converted output plus a few times
# CHUNK_BYTES of work space, whatever the file size; the caps bound the output and the
# evaluation that follows. Both caps can be raised with the environment variables below.
MAX_USER_BYTES = 1 << 30  # bytes of array data in a .npy/.npz file (1 GiB)
MAX_USER_SAMPLES = 100_000  # samples: array rows or image files
MAX_USER_BYTES_ENV = "OOD_MAX_USER_BYTES"
MAX_USER_SAMPLES_ENV = "OOD_MAX_USER_SAMPLES"
CHUNK_BYTES = 16 << 20  # float32 work space per batch of samples
FORTRAN_MAX_BYTES = 64 << 20  # column-major (Fortran-order) arrays cannot be read a batch of samples at a time

# what reading a .npy/.npz (a zip, read lazily) can raise when the file is damaged
_UNREADABLE = (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError)


def _env_limit(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        text = raw.replace("_", "")
        value = int(text) if text.isdigit() else int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise DataError(f"${var}={raw!r} is not a positive number; set it to a count such as {default}")
    return value


def user_limits() -> tuple[int, int]:
    """``(max bytes, max samples)`` of a user OOD set: :data:`MAX_USER_BYTES` and
    :data:`MAX_USER_SAMPLES`, or ``$OOD_MAX_USER_BYTES`` / ``$OOD_MAX_USER_SAMPLES`` when set."""
    return _env_limit(MAX_USER_BYTES_ENV, MAX_USER_BYTES), _env_limit(MAX_USER_SAMPLES_ENV, MAX_USER_SAMPLES)


def _human(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} bytes"
    value = nbytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _check_sample_count(n: int, source: str, what: str = "samples", instead: str = "a subset") -> None:
    """Refuse more than the sample cap (array rows or image files) with the way to raise it."""
    _, max_samples = user_limits()
    if n > max_samples:
        raise DataError(f"{source}: too many {what}: {n:,}{' files' if what == 'images' else ''}, more than the limit "
                        f"of {max_samples:,} for a user OOD set; pass {instead}, or raise the limit with the "
                        f"environment variable {MAX_USER_SAMPLES_ENV}={n}")


def _check_user_size(n: int, sample_shape: tuple[int, ...], itemsize: int, source: str) -> None:
    """Refuse an array above the caps, from its declared shape (before any data is read)."""
    max_bytes, _ = user_limits()
    nbytes = n * math.prod(sample_shape) * itemsize
    if nbytes > max_bytes:
        raise DataError(f"{source}: too large: {n:,} samples of shape {tuple(sample_shape)} hold {_human(nbytes)} of "
                        f"data, more than the limit of {_human(max_bytes)} for a user OOD set; pass a subset, or "
                        f"raise the limit with the environment variable {MAX_USER_BYTES_ENV}={nbytes}")
    _check_sample_count(n, source)


def _image_layout(shape: tuple[int, ...], source: str) -> str:
    """"nhw", "nhwc" or "nchw" for (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1,3,4}."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4:
        if shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
            return "nhwc"
        if shape[1] not in (1, 3, 4):
            raise DataError(f"{source}: shape {shape} has no channel axis of size 1, 3 or 4")
        return "nchw"
    raise DataError(f"{source}: shape {shape} is not an image batch; "
                    "expected (N, H, W), (N, H, W, C) or (N, C, H, W)")


def _as_nchw(arr: np.ndarray, channels: int, source: str) -> np.ndarray:
    """Accept (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1,3,4}; return (N, channels, H, W)."""
    layout = _image_layout(arr.shape, source)
    if layout == "nhw":
        arr = arr[:, None]
    elif layout == "nhwc":
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] == 4:
        arr = arr[:, :3]  # drop alpha
    if arr.shape[1] == 3 and channels == 1:
        arr = (0.299 * arr[:, 0] + 0.587 * arr[:, 1] + 0.114 * arr[:, 2])[:, None]
    elif arr.shape[1] == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=1)
    return arr


def _check_declared(shape: tuple[int, ...], dtype: np.dtype, input_shape: tuple[int, ...], source: str) -> None:
    """Validate the shape and dtype an array declares (a file header), before reading data."""
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 1 and math.prod(shape) == 0:
        raise DataError(f"{source}: no samples (shape {shape})")
    if len(input_shape) == 1:
        if len(shape) != 2 or shape[1] != input_shape[0]:
            raise DataError(f"{source}: shape {shape} does not fit this model; it takes (N, {input_shape[0]}) points")
        if dtype.kind not in "fiu":
            raise DataError(f"{source}: dtype {dtype} is not numeric")
        return
    if dtype.kind not in "fiub":
        raise DataError(f"{source}: dtype {dtype} is not numeric; save images as uint8 or float arrays")
    _image_layout(shape, source)


def _batch_size(shape: tuple[int, ...]) -> int:
    """Samples per batch so that one batch in float32 takes about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // max(1, 4 * math.prod(shape[1:])))


def _resize(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Images (N, C, H', W') resized bilinearly (antialiased) to (H, W); unchanged if already that size."""
    if t.shape[-2:] == (h, w):
        return t
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def _convert_batches(batches, n: int, dtype: np.dtype, input_shape: tuple[int, ...], source: str) -> torch.Tensor:
    """Convert samples arriving in consecutive batches into a preallocated (n, *input_shape) tensor.

    The range rule needs the range of the whole array, so float/int batches are converted
    unscaled while their range is tracked, and the whole output is divided by 255 at the end
    when the values are 0..255 (every step in between is linear, so this equals scaling first).
    """
    if len(input_shape) == 1:
        out = torch.empty((n, input_shape[0]), dtype=torch.float32)
        start, bad = 0, False
        for batch in batches:
            with np.errstate(over="ignore"):  # beyond the float32 range -> inf, refused below
                x = np.asarray(batch, dtype=np.float32)
            bad = bad or not np.isfinite(x).all()
            if not bad:
                out[start:start + len(x)] = torch.from_numpy(x)
            start += len(x)
        if bad:
            raise DataError(f"{source}: contains NaN/Inf values (or values beyond the float32 range); "
                            "replace them before evaluating")
        return out
    c, h, w = input_shape
    fixed = 255.0 if dtype == np.uint8 else (1.0 if dtype.kind == "b" else None)
    out = torch.empty((n, c, h, w), dtype=torch.float32)
    start, bad, lo, hi = 0, 0, np.inf, -np.inf
    for batch in batches:
        m = len(batch)
        with np.errstate(over="ignore"):  # beyond the float32 range -> inf, refused below
            x = np.asarray(batch).astype(np.float32)  # a copy: modified in place below
        if fixed is None:
            nonfinite = x.size - int(np.count_nonzero(np.isfinite(x)))
            bad += nonfinite
            if not nonfinite:
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
            if bad or lo < 0 or hi > 255:  # refused below; only keep counting
                start += m
                continue
        elif fixed != 1.0:
            x /= fixed
        t = torch.from_numpy(np.ascontiguousarray(_as_nchw(x, c, source)))
        out[start:start + m] = _resize(t, h, w)
        start += m
    if start != n:  # pragma: no cover - the readers yield exactly n samples
        raise AssertionError(f"{source}: converted {start} of {n} samples")
    if bad:
        raise DataError(f"{source}: {bad} NaN/Inf value(s); replace them before evaluating")
    if fixed is None:
        if lo >= 0.0 and hi <= 1.0:
            pass
        elif lo >= 0.0 and hi <= 255.0:
            out /= 255.0  # 0..255 pixel values stored as float/int
        else:
            raise DataError(f"{source}: values span [{lo:g}, {hi:g}]; images must be in [0, 1] or [0, 255]")
    return out.clamp_(0.0, 1.0)


def convert_to_id_format(arr: np.ndarray, input_shape: tuple[int, ...], source: str = "array") -> torch.Tensor:
    """Convert a user array to the ID format ``input_shape`` (C, H, W) or (D,), range [0, 1].

    Rules: uint8 is divided by 255; float/int arrays in [0, 1] are kept, in [0, 255]
    divided by 255, anything else is refused, as are NaN/Inf. Channels: RGB(A) -> grey by
    luminance when the model takes 1 channel, grey -> RGB by repetition. Spatial size:
    bilinear resize with antialiasing. Vector datasets (toy2d) need an (N, D) array and are
    not rescaled. The conversion runs in batches of about ``CHUNK_BYTES`` (float32) into a
    preallocated output, so ``arr`` may be a memory map larger than the memory.
    """
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    input_shape = tuple(input_shape)
    _check_declared(arr.shape, arr.dtype, input_shape, source)
    k = _batch_size(arr.shape)
    batches = (arr[i:i + k] for i in range(0, arr.shape[0], k))
    return _convert_batches(batches, arr.shape[0], arr.dtype, input_shape, source)


def _read_exact(f, buf: np.ndarray, source: str) -> None:
    """Fill the uint8 array ``buf`` from the stream ``f``; a short read is a truncated file."""
    view, got = memoryview(buf), 0
    try:
        while got < len(view):
            r = f.readinto(view[got:])
            if not r:
                raise DataError(f"{source}: truncated: the data end after {got} of {len(view)} bytes of a batch; "
                                "the file is incomplete")
            got += r
    except _UNREADABLE as e:
        raise DataError(f"{source}: not readable ({e.__class__.__name__}: {e})") from None


def _read_npy_header(f, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
    except (ValueError, SyntaxError, *_UNREADABLE) as e:
        raise DataError(f"{source}: not a readable .npy array (bad header: {e})") from None
    raise DataError(f"{source}: .npy format version {version[0]}.{version[1]} is not supported; "
                    "save plain numeric arrays with np.save")


def _read_npy_stream(f, source: str, input_shape: tuple[int, ...], total_size: int | None) -> torch.Tensor:
    """Read a .npy stream (a file or a zip member of ``total_size`` bytes) positioned at its
    magic, converting a batch of samples at a time.

    Shape, dtype and size are checked from the header before any data is read; object
    arrays (pickles) are refused there.
    """
    shape, fortran, dtype = _read_npy_header(f, source)
    if dtype.hasobject:
        raise DataError(f"{source}: refused: object arrays need pickle, which is not loaded")
    _check_declared(shape, dtype, input_shape, source)
    n, sample_shape = shape[0], tuple(shape[1:])
    _check_user_size(n, sample_shape, dtype.itemsize, source)
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        available = None if total_size is None else total_size - f.tell()
    except (OSError, ValueError):  # a stream that cannot tell: a short read is caught later
        available = None
    if available is not None and available < nbytes:
        raise DataError(f"{source}: truncated: the header declares shape {shape} of {dtype} ({_human(nbytes)}) "
                        f"but the file holds {_human(max(available, 0))} of data")
    if fortran and len(shape) > 1:
        if nbytes > FORTRAN_MAX_BYTES:
            raise DataError(f"{source}: stored in Fortran (column-major) order, which cannot be read in batches, and "
                            f"larger than {_human(FORTRAN_MAX_BYTES)}; re-save it with "
                            "np.save(path, np.ascontiguousarray(x))")
        buf = np.empty(nbytes, np.uint8)
        _read_exact(f, buf, source)
        return convert_to_id_format(buf.view(dtype).reshape(shape, order="F"), input_shape, source)
    k = _batch_size(shape)
    per_sample = math.prod(sample_shape) * dtype.itemsize

    def batches():
        buf = np.empty(min(k, n) * per_sample, np.uint8)  # reused: each batch is converted before the next read
        for i in range(0, n, k):
            m = min(k, n - i)
            raw = buf[: m * per_sample]
            _read_exact(f, raw, source)
            yield raw.view(dtype).reshape((m, *sample_shape))
        try:
            f.read(1)  # reach the end, so that a zip member's CRC is checked
        except _UNREADABLE as e:
            raise DataError(f"{source}: not readable ({e.__class__.__name__}: {e})") from None

    return _convert_batches(batches(), n, dtype, input_shape, source)


def _read_npz(path: Path, f, input_shape: tuple[int, ...]) -> torch.Tensor:
    try:
        archive = zipfile.ZipFile(f)
    except (ValueError, *_UNREADABLE) as e:
        raise DataError(f"{path}: not a readable .npy/.npz file ({e})") from None
    with archive:
        names = archive.namelist()
        keys = [n[:-4] if n.endswith(".npy") else n for n in names]  # as np.load's NpzFile.files
        if not keys:
            raise DataError(f"{path}: the .npz archive holds no array")
        key = "x" if "x" in keys else keys[0]
        if len(keys) > 1 and key != "x":
            raise DataError(f"{path}: the .npz holds several arrays {keys}; name the images 'x'")
        info = archive.getinfo(names[keys.index(key)])
        source = f"{path} (array {key!r})"
        try:
            member = archive.open(info)
        except _UNREADABLE as e:
            raise DataError(f"{source}: not readable ({e.__class__.__name__}: {e})") from None
        # a compressed member cannot be memory-mapped: its stream is decompressed a batch at a time
        with member:
            return _read_npy_stream(member, source, input_shape, total_size=info.file_size)


def _read_array_file(path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: not a readable .npy/.npz file ({e})") from None
    with f:
        try:
            magic = f.read(6)
            f.seek(0)
        except OSError as e:
            raise DataError(f"{path}: not a readable .npy/.npz file ({e})") from None
        if magic.startswith(b"PK"):
            return _read_npz(path, f, input_shape)
        if magic == b"\x93NUMPY":
            return _read_npy_stream(f, str(path), input_shape, total_size=os.fstat(f.fileno()).st_size)
        if magic[:1] == b"\x80":
            raise DataError(f"{path}: refused: this is a pickle, which is never loaded (it can run code); "
                            "save the images with np.save(path, x) as a numeric array")
        raise DataError(f"{path}: not a readable .npy/.npz file (it starts with neither the .npy nor the zip signature)")


# what decoding a damaged image can raise (PIL's plugins raise more than OSError)
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def _pil_to_unit(im, channels: int, f: Path) -> np.ndarray:
    """One PIL image as float32 (channels, H, W) in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit / 32-bit grey: convert("L") would clip at 255
        a = np.asarray(im).astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"{f}: NaN/Inf pixel values")
        lo, hi = float(a.min()), float(a.max())
        if mode == "F":  # float image: the array rule
            if lo >= 0 and hi <= 1:
                pass
            elif lo >= 0 and hi <= 255:
                a /= 255.0
            else:
                raise DataError(f"{f}: float pixel values span [{lo:g}, {hi:g}]; images must be in [0, 1] or [0, 255]")
        elif lo >= 0 and hi <= 65535:  # 16-bit grey (mode I;16, or I as older Pillow opens 16-bit PNGs)
            a /= 65535.0
        else:
            raise DataError(f"{f}: {mode} pixel values span [{lo:g}, {hi:g}]; integer images must be 8- or 16-bit")
        a = a[None]
        return np.repeat(a, 3, axis=0) if channels == 3 else a
    # palette, RGBA, LA, CMYK, bilevel, ...: PIL's conversion (alpha dropped, palette applied)
    a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _decode_image(f: Path, channels: int) -> np.ndarray:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(f) as im:
            if limit and im.size[0] * im.size[1] > limit:  # PIL only warns up to twice its limit
                raise DataError(f"{f}: refused: the image declares {im.size[0]}x{im.size[1]} pixels, more than "
                                f"{limit:,} (a possible decompression bomb); resize it first")
            return _pil_to_unit(im, channels, f)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{f}: refused: a possible decompression bomb ({e})") from None
    except _IMAGE_ERRORS as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"{f}: unreadable image ({e.__class__.__name__}: {e})") from None


def _read_image_folder(path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Decode the folder's images one at a time into a preallocated (N, C, H, W) tensor.

    Each image is converted to grey (1 channel) or RGB and resized to (H, W) on its own, so
    memory holds one decoded image at a time and images of different sizes mix freely.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    _check_sample_count(len(files), str(path), "images", "a smaller folder")
    c, h, w = input_shape
    out = torch.empty((len(files), c, h, w), dtype=torch.float32)
    for i, f in enumerate(files):
        t = torch.from_numpy(np.ascontiguousarray(_decode_image(f, c)))[None]
        out[i] = _resize(t, h, w).clamp_(0.0, 1.0)[0]
    return out


def load_user_ood(path, input_shape: tuple[int, ...]) -> tuple[str, torch.Tensor]:
    """Load a user's OOD set from ``.npy``/``.npz`` or an image folder; returns (name, tensor).

    The name is the file stem (or folder name). See :func:`convert_to_id_format` for the
    conversion rules. Pickled (object) arrays are refused. Safety: an array's header (shape,
    dtype, size) is checked before its data are read, and sets above :func:`user_limits`
    (``$OOD_MAX_USER_BYTES``, ``$OOD_MAX_USER_SAMPLES``) are refused; arrays are converted a
    batch of samples at a time and images one at a time, so memory stays bounded by the
    converted output plus a few times ``CHUNK_BYTES``. Damaged or oversized images
    (decompression bombs) raise :class:`DataError` naming the file.
    """
    path = Path(path)
    input_shape = tuple(input_shape)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if len(input_shape) != 3:
            raise DataError(f"{path}: an image folder cannot be an OOD set for a model taking points of shape {input_shape}")
        return path.name, _read_image_folder(path, input_shape)
    if path.suffix.lower() in (".npy", ".npz"):
        return path.stem, _read_array_file(path, input_shape)
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; pass a .npy/.npz array or a folder of images")
