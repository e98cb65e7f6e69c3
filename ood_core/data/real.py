"""Real datasets on disk (torchvision formats) and OpenOOD-style presets.

Nothing is downloaded unless asked: the data root comes from the ``data_root`` argument
(``--data-root DIR``), else the environment variable ``$OOD_DATA_ROOT`` (see
:mod:`ood_core.paths`); ``--download`` (environment ``OOD_DATA_DOWNLOAD=1``) lets
torchvision fetch missing sets into it (needs internet). With data missing and no
download, loading raises one :class:`~ood_core.errors.DataError` naming the expected
folder layout and the download flag.

How files are read: torchvision's dataset classes do the downloading (and, for MNIST,
FashionMNIST and VOC, the reading). CIFAR, SVHN and Places365 are read here with small
readers of the same on-disk formats (CIFAR python pickles, SVHN ``.mat``, JPEG folders),
because torchvision checks the MD5 sum of those files on every load, which only the
official archives pass. DTD, Places365 and TinyImageNet serve as OOD sets only, so their
labels are not read: their images are listed and a seeded subset is decoded.

Presets (:data:`PRESETS`) are pure data: the ID dataset and its near/far OOD sets. Only the ID
dataset must be on disk: an OOD set whose files are missing is skipped with a logged note and
named in ``Benchmark.missing_ood`` (with why), which ``evaluate`` reports; a name ending in
``?`` is optional: skipped with the note only, as it is not part of the preset's protocol.
Every OOD set is converted to the ID format (grey <-> RGB, bilinear resize) and capped at
:data:`OOD_SET_SIZE` seeded samples (environment ``OOD_SET_SIZE`` overrides).

Splits: train/val are carved from the official training split (``VAL_FRACTION`` held out,
seeded by the split seed); test is the official test split (VOC2012: its val split).
All classes are ID (no open-set protocol), so ``known`` must be None or all classes.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, DataNotFound, unknown
from ..paths import DATA_ROOT_ENV, DOWNLOAD_ENV, data_root, download_enabled  # noqa: F401  (env names re-exported)
from .benchmark import Benchmark, Split, require_all_known
from .convert import IMAGE_SUFFIXES, convert_to_id_format
from .embedded import add_generated
from .images import decode_uint8, list_class_images
from .limits import check_decoded_size

log = logging.getLogger(__name__)

OOD_SET_SIZE = 2000  # samples per OOD set (seeded subset), env OOD_SET_SIZE overrides
VAL_FRACTION = 0.1
VOC_SIZE = 64  # VOC images are resized (not cropped) to VOC_SIZE x VOC_SIZE
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

# where each dataset's files must lie under the data root
LAYOUTS = {
    "cifar10": "<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
    "cifar100": "<root>/cifar-100-python/{train, test, meta}",
    "svhn": "<root>/svhn/{train_32x32.mat, test_32x32.mat}",
    "mnist": "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashionmnist": "<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "dtd": "<root>/dtd/dtd/images/<class>/*.jpg",
    "places365": "<root>/val_256/*.jpg (Places365 'val' split, small=True)",
    "tinyimagenet": "<root>/tiny-imagenet-200/val/images/*.JPEG (no downloader: copy it there)",
    "voc2007": "<root>/VOCdevkit/VOC2007/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{trainval,test}.txt}",
    "voc2012": "<root>/VOCdevkit/VOC2012/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{train,val}.txt}",
}

# one file or folder per dataset whose presence says its files are there (checked by dataset_present)
MARKERS = {
    "cifar10": "cifar-10-batches-py/test_batch",
    "cifar100": "cifar-100-python/test",
    "svhn": "svhn/test_32x32.mat",
    "mnist": "MNIST/raw/t10k-images-idx3-ubyte",
    "fashionmnist": "FashionMNIST/raw/t10k-images-idx3-ubyte",
    "dtd": "dtd/dtd/images",
    "places365": "val_256",
    "tinyimagenet": "tiny-imagenet-200/val",
    "voc2007": "VOCdevkit/VOC2007/Annotations",
    "voc2012": "VOCdevkit/VOC2012/Annotations",
}

# presets: pure data. "name?" = optional (skipped when missing)
PRESETS = {
    "cifar10": {"id": "cifar10", "near": ["cifar100", "tinyimagenet?"], "far": ["mnist", "svhn", "dtd", "places365"]},
    "cifar100": {"id": "cifar100", "near": ["cifar10", "tinyimagenet?"], "far": ["mnist", "svhn", "dtd", "places365"]},
    "mnist": {"id": "mnist", "near": ["fashionmnist"], "far": ["dtd", "cifar10", "places365"]},
    "svhn": {"id": "svhn", "near": [], "far": ["cifar10", "dtd", "places365"]},
    "voc2007": {"id": "voc2007", "near": [], "far": ["dtd"]},
    "voc2012": {"id": "voc2012", "near": [], "far": ["dtd"]},
}


# --------------------------------------------------------------------------- presence / errors
def dataset_present(name: str, root) -> bool:
    """Whether ``name``'s files seem to be under ``root`` (its marker file or folder exists; the
    files are only read, and checked, when a benchmark is built)."""
    return (Path(root).expanduser() / MARKERS[name]).exists()


def preset_status(preset: str, root) -> dict[str, bool]:
    """``{dataset: present}`` for the ID dataset and every OOD set of ``PRESETS[preset]``
    (optional sets keep their ``?``)."""
    p = PRESETS[preset]
    return {entry: dataset_present(entry.rstrip("?"), root) for entry in [p["id"], *p["near"], *p["far"]]}


def ood_set_size() -> int:
    return int(os.environ.get("OOD_SET_SIZE", OOD_SET_SIZE))


def missing(name: str, root: Path, detail: str = "") -> DataNotFound:
    return DataNotFound(f"{name} not found under {root}{f' ({detail})' if detail else ''}; expected layout: "
                     f"{LAYOUTS[name]}; pass --download (needs internet) or copy the files there")


def _tv_download(name, root: Path, make, download=None) -> None:
    """Run torchvision's downloader ``make()`` when downloading is enabled; wrap its errors."""
    if not download_enabled(download):
        return
    try:
        make()
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); expected layout: "
                        f"{LAYOUTS[name]}") from None


def _subset(n: int, seed, size: int | None = None) -> np.ndarray:
    size = ood_set_size() if size is None else size
    idx = np.arange(n)
    if n > size:
        idx = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return idx


# --------------------------------------------------------------------------- readers
class _PlainDataUnpickler(pickle.Unpickler):
    """Reads the CIFAR python batches (dicts of str, bytes, lists and numpy arrays) and refuses
    any other global, so a crafted file cannot run code when it is loaded."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytes"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused: the file references {module}.{name}, which a CIFAR batch "
                                     "never does (a crafted file could run code)")


def _load_plain_pickle(fh):
    return _PlainDataUnpickler(fh, encoding="latin1").load()


def load_cifar(name: str, train: bool, root=None, download=None):
    """CIFAR-10/100 from the python pickles: ``(x uint8 (N,3,32,32), y int64 (N,), class names)``."""
    root = data_root(root)
    ten = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    if download_enabled(download):
        from torchvision.datasets import CIFAR10, CIFAR100

        _tv_download(name, root, lambda: (CIFAR10 if ten else CIFAR100)(str(root), train=train, download=True), True)
    files = ([f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]) if ten else (
        ["train"] if train else ["test"])
    meta_file = "batches.meta" if ten else "meta"
    xs, ys = [], []
    try:
        for f in files:
            with open(folder / f, "rb") as fh:
                d = _load_plain_pickle(fh)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d["labels" if ten else "fine_labels"], dtype=np.int64))
        with open(folder / meta_file, "rb") as fh:
            names = list(_load_plain_pickle(fh)["label_names" if ten else "fine_label_names"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise missing(name, root, f"{type(e).__name__}: {e}") from None
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), names


def load_svhn(train: bool, root=None, download=None):
    """SVHN cropped digits from ``<root>/svhn/{train,test}_32x32.mat`` (label 10 means digit 0)."""
    from scipy.io import loadmat

    root = data_root(root)
    split = "train" if train else "test"
    if download_enabled(download):
        from torchvision.datasets import SVHN

        _tv_download("svhn", root, lambda: SVHN(str(root / "svhn"), split=split, download=True), True)
    try:
        mat = loadmat(root / "svhn" / f"{split}_32x32.mat")
        x = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8)  # (32,32,3,N) -> (N,3,32,32)
        y = mat["y"].astype(np.int64).squeeze(1) % 10
    except (OSError, KeyError, ValueError) as e:
        raise missing("svhn", root, f"{type(e).__name__}: {e}") from None
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), [str(i) for i in range(10)]


def load_mnist(name: str, train: bool, root=None, download=None):
    """MNIST / FashionMNIST through torchvision (raw idx files): ``(x (N,1,28,28) uint8, y, names)``."""
    from torchvision.datasets import MNIST, FashionMNIST

    root = data_root(root)
    cls = MNIST if name == "mnist" else FashionMNIST
    try:
        ds = cls(str(root), train=train, download=download_enabled(download))
    except (RuntimeError, OSError, ValueError) as e:
        raise missing(name, root, f"{type(e).__name__}: {e}") from None
    return ds.data[:, None].contiguous(), ds.targets.long(), list(ds.classes)


def _read_images(files, size, channels: int, resize: int | None = None, exif: bool = True) -> np.ndarray:
    """Decode ``files`` one at a time into uint8 (N, channels, H, W) with the checked decoder of
    :mod:`.images` (regular files, pixel limit, EXIF orientation when ``exif``, one-line errors)."""
    out = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = decode_uint8(f, channels, size, resize, exif=exif)
    return out.transpose(0, 3, 1, 2)


IMAGE_SETS = {  # OOD-only image sets: folder (relative to root) searched recursively
    "dtd": "dtd/dtd/images",
    "places365": "val_256",
    "tinyimagenet": "tiny-imagenet-200/val",
}


def load_image_set(name: str, size, channels: int = 3, seed=0, root=None, download=None) -> torch.Tensor:
    """A seeded subset (``OOD_SET_SIZE``) of an OOD image set, decoded at ``size`` (H, W)."""
    root = data_root(root)
    if name == "dtd":
        from torchvision.datasets import DTD

        _tv_download(name, root, lambda: DTD(str(root), download=True), download)
    elif name == "places365":
        from torchvision.datasets import Places365

        _tv_download(name, root, lambda: Places365(str(root), split="val", small=True, download=True), download)
    folder = root / IMAGE_SETS[name]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise missing(name, root, f"no images in {folder}")
    files = [files[i] for i in _subset(len(files), seed)]
    # read as their benchmarks read them: no EXIF rotation, so the numbers stay comparable
    return torch.from_numpy(_read_images(files, size, channels, exif=False))


def list_image_folder(path, seen: dict | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """``(class names, image files, labels)`` of a labelled image folder ``<path>/<class>/...``,
    listed with the bounds and checks of :func:`ood_core.data.images.list_class_images` (no
    image is decoded)."""
    classes, samples = list_class_images(path, seen)
    return classes, [f for f, _ in samples], np.array([k for _, k in samples], dtype=np.int64)


def _decode_folder(path, files, y, size, channels: int, resize: int | None):
    check_decoded_size(len(files), (channels, *size), str(path))
    return torch.from_numpy(_read_images(files, size, channels, resize)), torch.from_numpy(y)


def load_image_folder(path, size, channels: int = 3, resize: int | None = None):
    """A labelled image folder (``<path>/<class>/*.jpg``, torchvision ImageFolder layout):
    (x uint8 (N, C, H, W), y, class names). Listed with a bounded walk (:func:`list_image_folder`)
    and refused before decoding when the decoded float32 tensor would exceed the user-data
    limit (:func:`ood_core.data.user.user_limits`)."""
    classes, files, y = list_image_folder(path)
    x, y = _decode_folder(path, files, y, size, channels, resize)
    return x, y, classes


def load_voc(year: str, image_set: str, root=None, size: int = VOC_SIZE, download=None):
    """PASCAL VOC as 20-label multi-label: ``(x uint8 (N,3,size,size), y float32 multi-hot (N,20))``.

    Labels are every object class named in the image's XML annotation (difficult objects
    included); images are resized to ``size`` x ``size`` without keeping the aspect ratio.
    """
    from PIL import Image
    from torchvision.datasets import VOCDetection

    root = data_root(root)
    name = f"voc{year}"
    try:
        ds = VOCDetection(str(root), year=year, image_set=image_set, download=download_enabled(download))
    except (RuntimeError, OSError, ValueError) as e:
        raise missing(name, root, f"{type(e).__name__}: {e}") from None
    col = {c: i for i, c in enumerate(VOC_CLASSES)}
    x = np.empty((len(ds), size, size, 3), dtype=np.uint8)
    y = np.zeros((len(ds), len(VOC_CLASSES)), dtype=np.float32)
    for i in range(len(ds)):
        try:
            img, target = ds[i]
        except (OSError, KeyError) as e:
            raise missing(name, root, f"image {i}: {type(e).__name__}: {e}") from None
        x[i] = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
        for obj in target["annotation"].get("object", []):
            if obj["name"] not in col:
                raise DataError(f"{name}: unknown VOC class {obj['name']!r} in annotation {ds.annotations[i]}")
            y[i, col[obj["name"]]] = 1.0
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y), list(VOC_CLASSES)


# --------------------------------------------------------------------------- ID / OOD dispatch
ID_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32), "mnist": (1, 28, 28),
             "fashionmnist": (1, 28, 28), "voc2007": (3, VOC_SIZE, VOC_SIZE), "voc2012": (3, VOC_SIZE, VOC_SIZE)}


def load_split(name: str, train: bool, root=None, download=None):
    """Official train (``train=True``) or test split of an ID-capable dataset: (x uint8, y, class names).

    ``root``: the data root (None: ``$OOD_DATA_ROOT``); ``download``: let torchvision fetch
    missing files (None: ``$OOD_DATA_DOWNLOAD``); the same two arguments for every loader here."""
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, train, root, download)
    if name == "svhn":
        return load_svhn(train, root, download)
    if name in ("mnist", "fashionmnist"):
        return load_mnist(name, train, root, download)
    if name in ("voc2007", "voc2012"):
        year = name[3:]
        sets = {"2007": ("trainval", "test"), "2012": ("train", "val")}[year]
        return load_voc(year, sets[0] if train else sets[1], root, download=download)
    raise unknown("real dataset", name, ID_SHAPES)


def load_ood_set(name: str, input_shape, seed, root=None, download=None) -> torch.Tensor:
    """OOD set ``name`` (test split / image list), seeded subset, in the ID format ``input_shape``."""
    if name in IMAGE_SETS:
        x = load_image_set(name, input_shape[1:], input_shape[0], seed=seed, root=root, download=download)
    else:
        x, _, _ = load_split(name, train=False, root=root, download=download)
        x = x[torch.from_numpy(_subset(len(x), seed))]
    return convert_to_id_format(x.numpy(), tuple(input_shape), name)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def build_preset(preset: str, known=None, split_seed: int = 0, ood_seed: int = 0, data_root=None,
                 download=None) -> Benchmark:
    """Build the benchmark of ``PRESETS[preset]`` from the files under ``data_root`` (default:
    ``$OOD_DATA_ROOT``), fetching missing ones when ``download`` (default: ``$OOD_DATA_DOWNLOAD``)."""
    p = PRESETS[preset]
    name = p["id"]
    shape = ID_SHAPES[name]
    x_tr, y_tr, names = load_split(name, train=True, root=data_root, download=download)
    x_te, y_te, _ = load_split(name, train=False, root=data_root, download=download)
    multilabel = y_tr.dim() == 2
    require_all_known(preset, known, len(names))
    perm = torch.from_numpy(np.random.default_rng([split_seed, 11]).permutation(len(x_tr)))
    n_val = max(1, int(round(VAL_FRACTION * len(x_tr))))
    va, tr = perm[:n_val], perm[n_val:]
    ood, groups, not_found = {}, {}, {}
    for group in ("near", "far"):
        for entry in p.get(group, []):
            set_name = entry.rstrip("?")
            try:
                ood[set_name] = load_ood_set(set_name, shape, [ood_seed, hash_name(set_name)], root=data_root,
                                             download=download)
            except DataError as e:  # the model can still be trained and scored on the sets that are there
                if not entry.endswith("?"):
                    not_found[set_name] = str(e)
                log.warning("%s: OOD set %s skipped: %s", preset, set_name, e)
                continue
            groups[set_name] = group
    return Benchmark(preset, "multilabel" if multilabel else "multiclass", shape, tuple(range(len(names))),
                     [str(n) for n in names], Split(_to_float(x_tr[tr]), y_tr[tr]), Split(_to_float(x_tr[va]), y_tr[va]),
                     Split(_to_float(x_te), y_te), ood, groups, split_seed, ood_seed, missing_ood=not_found)


IMAGE_FOLDER_SIZE = 32  # imagefolder:PATH images are resized to 3 x 32 x 32 unless a preprocess says otherwise


MIN_PER_CLASS = 5  # images per class of a single image folder: 60/20/20 stratified always works from 5
MIN_TRAIN_PER_CLASS = 2  # images per class in PATH/train (and in all, 10 % of them at least one per class)


def _stratified(idx: np.ndarray, y: np.ndarray, train_size: float, seed: int, path) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(idx, train_size=train_size, stratify=y, random_state=seed)
    except ValueError as e:
        raise DataError(f"{path}: too few images per class for a stratified split ({e}); add images") from None


def _check_counts(path, classes: list[str], y: np.ndarray, least: int, why: str) -> None:
    counts = np.bincount(y, minlength=len(classes))
    few = [(classes[k], int(c)) for k, c in enumerate(counts) if c < least]
    if few:
        listed = ", ".join(f"{name} ({c})" for name, c in few[:5]) + (", ..." if len(few) > 5 else "")
        raise DataError(f"{path}: too few images per class: {listed}; {why} needs at least {least} images per "
                        "class; add images")


def _validate_folder(path, classes: list[str], y: np.ndarray, train_split: bool) -> None:
    """Refuse, before any image is decoded, a folder whose splits cannot be made."""
    if len(classes) < 2:
        raise DataError(f"{path}: {len(classes)} class folder ({', '.join(classes)}); a dataset needs at least 2 "
                        "classes, one sub-folder of images each (<path>/<class>/<image>)")
    if not train_split:
        _check_counts(path, classes, y, MIN_PER_CLASS, "the stratified 60/20/20 train/val/test split")
        return
    _check_counts(path, classes, y, MIN_TRAIN_PER_CLASS, "the stratified 90/10 train/val split")
    n_val = len(y) - math.floor(0.9 * len(y))  # as train_test_split(train_size=0.9) counts
    if n_val < len(classes):
        need = 10 * (len(classes) - 1) + 1
        raise DataError(f"{path}: {len(y)} images for {len(classes)} classes; the stratified 10 % validation split "
                        f"needs at least as many images as classes, so at least {need} images in all; add images")


def build_image_folder(name: str, known=None, split_seed: int = 0, ood_seed: int = 0,
                       preprocess: dict | None = None) -> Benchmark:
    """``imagefolder:PATH``: ID classes = the subfolders of PATH, in RGB.

    Splits: with ``PATH/train`` and ``PATH/test`` (each ``<class>/<image>``, the same classes)
    test is ``PATH/test`` and 10 % of ``PATH/train`` (stratified, split seed) is the validation
    split; otherwise all images are split 60/20/20 (stratified, split seed).
    Size: ``preprocess`` ``{"crop": C, "resize": R}`` (an imported model's, see
    :func:`ood_core.adapters.preprocess_from_weights`) scales the shorter side to R and cuts
    the centre C x C; without it images are resized to 32 x 32. OOD = the generated far-OOD
    families of :mod:`ood_core.data.embedded` at that size (group ``far-synthetic``). PATH and
    the preprocess are stored in the benchmark's spec, so checkpoints rebuild it.

    The folder is checked before any image is decoded (so before training or importing): at
    least 2 classes, enough images per class for the splits (:data:`MIN_PER_CLASS`; with
    ``train/``, 2 per class and 10 % of them at least the number of classes), the known classes, and the
    walk's rules (:mod:`ood_core.data.images`: regular files only, no link to a folder below
    the class folders, no file twice, also not in both train/ and test/).
    """
    path = Path(name.split(":", 1)[1]).expanduser().resolve()
    name = f"imagefolder:{path}"  # absolute, so the checkpoint's spec finds it from any folder
    pre = {k: int(v) for k, v in (preprocess or {}).items() if k in ("resize", "crop") and v}
    crop = pre.get("crop", IMAGE_FOLDER_SIZE)
    size = (crop, crop)
    if (path / "train").is_dir() and (path / "test").is_dir():
        seen: dict = {}  # one walk's files, so that an image in both train/ and test/ is refused
        classes, f_tr, y_tr = list_image_folder(path / "train", seen)
        test_classes, f_te, y_te = list_image_folder(path / "test", seen)
        if test_classes != classes:
            raise DataError(f"{path}: train/ and test/ hold different classes ({', '.join(classes)} vs "
                            f"{', '.join(test_classes)})")
        _validate_folder(path / "train", classes, y_tr, train_split=True)
        require_all_known(name, known, len(classes))
        tr, va = _stratified(np.arange(len(y_tr)), y_tr, 0.9, split_seed, path / "train")
        check_decoded_size(len(f_tr) + len(f_te), (3, *size), str(path))
        x_tr, y_tr = _decode_folder(path / "train", f_tr, y_tr, size, 3, pre.get("resize"))
        x_te, y_te = _decode_folder(path / "test", f_te, y_te, size, 3, pre.get("resize"))
        xf = _to_float(x_tr)
        parts = [Split(xf[torch.from_numpy(tr)], y_tr[torch.from_numpy(tr)]),
                 Split(xf[torch.from_numpy(va)], y_tr[torch.from_numpy(va)]), Split(_to_float(x_te), y_te)]
    else:
        classes, files, y = list_image_folder(path)
        _validate_folder(path, classes, y, train_split=False)
        require_all_known(name, known, len(classes))
        tr, rest = _stratified(np.arange(len(y)), y, 0.6, split_seed, path)
        va, te = _stratified(rest, y[rest], 0.5, split_seed, path)
        x, y = _decode_folder(path, files, y, size, 3, pre.get("resize"))
        xf = _to_float(x)
        parts = [Split(xf[torch.from_numpy(i)], y[torch.from_numpy(i)]) for i in (tr, va, te)]
    ood, groups = {}, {}
    add_generated(ood, groups, (3, *size), ood_seed)
    return Benchmark(name, "multiclass", (3, *size), tuple(range(len(classes))), list(classes), *parts, ood, groups,
                     split_seed, ood_seed, preprocess=pre or None)


def hash_name(name: str) -> int:
    """A stable per-set seed component (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


def describe_preset(preset: str) -> str:
    """The one-line description of ``PRESETS[preset]`` (``list`` and the app show it)."""
    p = PRESETS[preset]
    near = ", ".join(p.get("near", [])) or "-"
    far = ", ".join(p.get("far", [])) or "-"
    kind = "multi-label (20 VOC classes)" if preset.startswith("voc") else "multi-class"
    return f"[real data, needs --data-root] {p['id']} {kind}; near: {near}; far: {far} (? = if present)"


def preset_builder(preset: str):
    """The registry's builder of ``preset``: :func:`build_preset` with the preset bound."""
    def build(known=None, split_seed: int = 0, ood_seed: int = 0, data_root=None, download=None) -> Benchmark:
        return build_preset(preset, known=known, split_seed=split_seed, ood_seed=ood_seed, data_root=data_root,
                            download=download)

    build.__name__ = f"load_{preset}_benchmark"
    build.__doc__ = f"Preset {preset!r}: {describe_preset(preset)}"
    return build
