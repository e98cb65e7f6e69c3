"""Model outputs (features, logits) cached on disk, keyed by the model's weights and the data.

Extracting ResNet-18 features of 50,000 CIFAR images takes minutes on a CPU; every score,
geometry view and map reads the same ``(features, logits)``. :class:`FeatureCache` keeps them
in ``<cache dir>/features/`` so that the CLI (``python -m ood_core features``, ``evaluate``,
``geometry``, ``project``) and the app share one extraction per model and set.

Keys are content hashes, never names: the model part hashes its spec and every tensor of its
state dict, the data part hashes the set's tensor (dtype, shape and bytes). Retraining a
checkpoint under the same file name, or changing a set (another data root, seed or upload),
gives other keys, so a cached entry can never be served for another model or other data.
A file that cannot be read back as two finite float32 arrays of exactly the shapes this model
gives on this set (rows, feature dimension, number of logits), with intact CRCs, is ignored and
replaced; sizes are checked from the headers before any data is read.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write
from .models import ModelOutput
from .paths import default_cache_dir

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is stored changes: old entries then miss
SUBDIR = "features"


def _update_with_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hex digest of the model's spec (if it has one) and every parameter and buffer."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"format{FORMAT}".encode())
    h.update(json.dumps(getattr(model, "spec", None), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update_with_tensor(h, t)
    return h.hexdigest()


def data_fingerprint(x: torch.Tensor) -> str:
    """Hex digest of a set's inputs (dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    _update_with_tensor(h, x)
    return h.hexdigest()


class FeatureCache:
    """Outputs of a model on a set, stored as ``<folder>/<model key>/<set>-<data key>.npz``.

    ``folder`` is typically ``default_cache_dir() / "features"`` (see :func:`default_feature_cache`).
    Entries are written atomically (temporary file, then rename), so a reader sees a complete
    file or none. Nothing is ever evicted: delete the folder to reclaim the space
    (ResNet-18 features of CIFAR-10's training split take about 90 MB).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def path(self, model_key: str, set_name: str, data_key: str) -> Path:
        # the set name is only for people reading the folder; the data key decides
        readable = re.sub(r"[^A-Za-z0-9_.-]", "_", set_name)[:40] or "set"
        return self.folder / model_key / f"{readable}-{data_key}.npz"

    def load(self, model_key: str, set_name: str, data_key: str, n: int,
             widths: tuple[int, int] | None = None) -> ModelOutput | None:
        """The cached outputs, or None when absent or unusable (``n`` = the set's sample count,
        ``widths`` = ``(feature dim, number of logits)`` of the model, see
        :func:`ood_core.evaluate.output_widths`; None checks the rows only).

        An entry is served only when it holds exactly ``features.npy`` of shape ``(n, d)`` and
        ``logits.npy`` of shape ``(n, K)``, little-endian float32, finite, whose bytes match the
        zip archive's CRC-32. The shapes and sizes are read from the members' headers before any
        data, so an entry declaring more than it should hold (a zip bomb) is refused without
        being decompressed. An unusable entry is logged and ignored (the caller recomputes and
        rewrites it), never served."""
        path = self.path(model_key, set_name, data_key)
        if not path.is_file():
            return None
        try:
            arrays = _read_entry(path, n, widths)
        except _BadEntry as e:
            log.warning("ignoring feature cache %s: %s", path, e)
            return None
        except Exception as e:  # any unreadable file (truncated, not a zip, bad CRC): recompute it
            log.warning("ignoring unreadable feature cache %s (%s: %s)", path, type(e).__name__, e)
            return None
        return ModelOutput(torch.from_numpy(arrays["features"]), torch.from_numpy(arrays["logits"]))

    def store(self, model_key: str, set_name: str, data_key: str, out: ModelOutput) -> Path:
        buf = io.BytesIO()
        np.savez(buf, features=out.features.numpy(), logits=out.logits.numpy())
        # a lost cache entry is recomputed, so no fsync: the rename alone keeps readers from partial files
        return atomic_write(self.path(model_key, set_name, data_key), lambda f: f.write(buf.getvalue()),
                            fsync=False)


class _BadEntry(Exception):
    """A cache entry that is readable but not what this model's outputs on this set must be."""


MEMBERS = ("features", "logits")
DTYPE = np.dtype("<f4")  # what extraction stores: float32, little-endian
READ_CHUNK = 16 << 20  # bytes copied at a time from an entry into its array


def _read_entry(path: Path, n: int, widths: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """``{"features", "logits"}`` arrays of the entry at ``path``, checked before and after
    reading (see :meth:`FeatureCache.load`); _BadEntry or a read error otherwise."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        if names != sorted(f"{m}.npy" for m in MEMBERS):
            raise _BadEntry(f"holds {', '.join(names) or 'nothing'}, not features.npy and logits.npy")
        for member, width in zip(MEMBERS, widths or (None, None)):
            info = archive.getinfo(f"{member}.npy")
            row_bytes = (width or 1) * DTYPE.itemsize
            if width is not None and info.file_size > _MAX_HEADER + n * row_bytes:
                raise _BadEntry(f"{member} declares {info.file_size} bytes; {n} x {width} float32 take "
                                f"{n * row_bytes}")
            if info.compress_type != zipfile.ZIP_STORED:  # so no member can unpack to more than the file's size
                raise _BadEntry(f"{member} is compressed; the cache stores its arrays uncompressed")
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise _BadEntry(f"{member}: .npy format {version} is not what the cache writes")
                want = (n, width) if width is not None else (n, shape[1] if len(shape) == 2 else -1)
                if tuple(shape) != want or dtype != DTYPE or fortran:
                    raise _BadEntry(f"{member} is {dtype} {tuple(shape)}{' (Fortran order)' if fortran else ''}; "
                                    f"expected float32 {want}")
                nbytes = int(np.prod(shape)) * DTYPE.itemsize
                if info.file_size != f.tell() + nbytes:
                    raise _BadEntry(f"{member} declares {info.file_size} bytes; its header says "
                                    f"{f.tell() + nbytes}")
                arr = np.empty(shape, DTYPE)
                view = memoryview(arr.reshape(-1).view(np.uint8))
                done = 0
                while done < nbytes:
                    chunk = f.read(min(READ_CHUNK, nbytes - done))
                    if not chunk:
                        raise _BadEntry(f"{member} is truncated ({done} of {nbytes} bytes)")
                    view[done:done + len(chunk)] = chunk
                    done += len(chunk)
                if f.read(1):  # also the last read, at which zipfile compares the CRC-32
                    raise _BadEntry(f"{member} holds more bytes than its header says")
            if not np.isfinite(arr).all():
                raise _BadEntry(f"{member} holds NaN or Inf")
            out[member] = arr
    return out


_MAX_HEADER = 65536 + 16  # an .npy header is at most this long (numpy's reader refuses longer ones)


def default_feature_cache() -> FeatureCache:
    """The cache the CLI and the app share: ``$OOD_CACHE_DIR/features`` (else ``~/.cache/ood-lab/features``)."""
    return FeatureCache(default_cache_dir() / SUBDIR)
