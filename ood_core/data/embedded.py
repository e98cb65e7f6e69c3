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

User OOD sets (files and uploads) are read by :mod:`ood_core.data.user`; the dataset
registry (:func:`ood_core.data.load_benchmark`) is in :mod:`ood_core.data.registry`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Callable

import numpy as np
import torch

from ..errors import DataError, unknown
from .benchmark import FAR_REAL, FAR_SYNTHETIC, NEAR, Benchmark, Split, check_known, require_all_known
from .convert import as_nchw

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
N_GENERATED = 300  # samples per generated or far-real OOD set


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
            a = as_nchw(a[None], 1, name)[0, 0].astype(np.float32)
        a.flags.writeable = False  # shared by every call through the cache
        out.append(a)
    return tuple(out)


def preload_real_sources() -> None:
    """Read every image of :data:`REAL_SOURCES` into the per-process cache of the far-real sets.

    A long-running process (the app's server) calls it once in the background at start-up, so
    the first benchmark it builds does not pay the decoding (about 0.25 s on 2 cores). A source
    that cannot be read is left to :func:`real_ood` to report when a set needs it."""
    for name in REAL_SOURCES:
        try:
            _real_source(name)
        except DataError:
            pass


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


def add_generated(ood: dict, groups: dict, shape, seed: int) -> None:
    """Add the far-synthetic sets (:data:`IMAGE_OOD_SETS`) of image ``shape`` to ``ood`` / ``groups``."""
    for name in IMAGE_OOD_SETS:
        ood[name] = generate_ood(name, N_GENERATED, shape, seed)
        groups[name] = FAR_SYNTHETIC


def add_real(ood: dict, groups: dict, shape, seed: int) -> None:
    """Add the far-real sets (:data:`REAL_OOD_SETS`) of grey image ``shape`` to ``ood`` / ``groups``."""
    for name in REAL_OOD_SETS:
        ood[name] = real_ood(name, N_GENERATED, shape, seed)
        groups[name] = FAR_REAL


def load_digits_benchmark(known=None, split_seed: int = 0, ood_seed: int = 0) -> Benchmark:
    known = check_known(known)
    splits = _digit_splits(split_seed)
    parts = {}
    for name, (x, y) in splits.items():
        keep = np.isin(y, known)
        parts[name] = Split(torch.from_numpy(x[keep]), torch.from_numpy(_remap(y[keep], known)))
    x_test, y_test = splits["test"]
    ood = {"unknown": torch.from_numpy(x_test[~np.isin(y_test, known)])}
    groups = {"unknown": NEAR}
    add_real(ood, groups, (1, 8, 8), ood_seed)
    add_generated(ood, groups, (1, 8, 8), ood_seed)
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
    require_all_known("toy2d", known, TOY_CLASSES)
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
    known = check_known(known)
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
    add_real(ood, groups, (1, 16, 16), ood_seed)
    add_generated(ood, groups, (1, 16, 16), ood_seed)
    return Benchmark("digit-canvases", "multilabel", (1, 16, 16), known, [str(k) for k in known],
                     parts["train"], parts["val"], parts["test"], ood, groups, split_seed, ood_seed)

# --------------------------------------------------------------------------- training outliers
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
