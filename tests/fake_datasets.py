"""Tiny fake datasets written in the real on-disk formats (CIFAR pickles, SVHN .mat, MNIST idx,
DTD / Places365 JPEG folders, VOC XML), for the real-data tests and the app's data-root tests."""
import pickle
import struct

import numpy as np
from PIL import Image

N_TRAIN, N_TEST = 20, 6  # per CIFAR train batch / test batch


def _pixels(n, c, h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def write_cifar(root, hundred=False):
    if hundred:
        folder, key, n_cls = root / "cifar-100-python", "fine_labels", 100
        parts = {"train": 5 * N_TRAIN, "test": N_TEST}
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20})
    else:
        folder, key, n_cls = root / "cifar-10-batches-py", "labels", 10
        parts = {**{f"data_batch_{i}": N_TRAIN for i in range(1, 6)}, "test_batch": N_TEST}
        meta = ("batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    folder.mkdir(parents=True)
    for i, (name, n) in enumerate(parts.items()):
        x = _pixels(n, 3, 32, 32, seed=[hundred, i])
        y = [(j + i) % n_cls for j in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.reshape(n, -1), key: y, "filenames": [f"{j}.png" for j in range(n)]}, f)
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f)


def write_svhn(root):
    from scipy.io import savemat

    (root / "svhn").mkdir(parents=True)
    for split, n in (("train", 20), ("test", 12)):
        x = _pixels(n, 3, 32, 32, seed=5).transpose(2, 3, 1, 0)  # -> (32, 32, 3, N) as in the real file
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # 1..10, 10 = digit 0
        savemat(root / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y})


def _idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim  # unsigned byte, ndim
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


def write_mnist(root, name="MNIST"):
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 12)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", _pixels(n, 1, 28, 28, seed=7)[:, 0])
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def _jpegs(folder, n, size=(40, 30), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img_{i:04d}.jpg")


def write_dtd(root):
    for k, cls in enumerate(("banded", "dotted")):
        _jpegs(root / "dtd" / "dtd" / "images" / cls, 5, seed=k)
    labels = root / "dtd" / "dtd" / "labels"
    labels.mkdir()
    (labels / "test1.txt").write_text("".join(f"banded/img_{i:04d}.jpg\n" for i in range(5)))


def write_places(root):
    _jpegs(root / "val_256", 8, size=(64, 64), seed=3)
    (root / "places365_val.txt").write_text("".join(f"img_{i:04d}.jpg 0\n" for i in range(8)))


VOC_OBJECTS = [["dog"], ["person", "car"], ["cat", "cat"], ["tvmonitor"], ["person"], ["bird", "aeroplane"]]


def write_voc(root, year="2007"):
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    ids = [f"{i:06d}" for i in range(12)]
    rng = np.random.default_rng(9)
    for i, img_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{img_id}.jpg")
        objs = "".join(f"<object><name>{o}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                       f"<xmax>20</xmax><ymax>20</ymax></bndbox></object>" for o in VOC_OBJECTS[i % len(VOC_OBJECTS)])
        (base / "Annotations" / f"{img_id}.xml").write_text(
            f"<annotation><folder>VOC{year}</folder><filename>{img_id}.jpg</filename>"
            f"<size><width>80</width><height>50</height><depth>3</depth></size>{objs}</annotation>")
    train, test = ids[:8], ids[8:]
    sets = {"trainval": train, "test": test} if year == "2007" else {"train": train, "val": test}
    for name, members in sets.items():
        (base / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(members) + "\n")


def write_all(root):
    """Every fake dataset the cifar10/cifar100/mnist/svhn/voc2007 presets need, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    write_cifar(root)
    write_cifar(root, hundred=True)
    write_svhn(root)
    write_mnist(root)
    write_mnist(root, "FashionMNIST")
    write_dtd(root)
    write_places(root)
    write_voc(root)
    return root
