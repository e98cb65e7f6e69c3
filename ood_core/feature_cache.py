"""Model outputs (features, logits) cached on disk, keyed by the model's weights and the data.

Extracting ResNet-18 features of 50,000 CIFAR images takes minutes on a CPU; every score,
geometry view and map reads the same ``(features, logits)``. :class:`FeatureCache` keeps them
in ``<cache dir>/features/`` so that the CLI (``python -m ood_core features``, ``evaluate``,
``geometry``, ``project``) and the app share one extraction per model and set.

Keys are content hashes, never names: the model part hashes its spec and every tensor of its
state dict, the data part hashes the set's tensor (dtype, shape and bytes). Retraining a
checkpoint under the same file name, or changing a set (another data root, seed or upload),
gives other keys, so a cached entry can never be served for another model or other data.
A file that cannot be read back as two finite float arrays of the right length is ignored
and replaced.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
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

    def load(self, model_key: str, set_name: str, data_key: str, n: int) -> ModelOutput | None:
        """The cached outputs, or None when absent or unusable (``n`` = the set's sample count)."""
        path = self.path(model_key, set_name, data_key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                feats, logits = f["features"], f["logits"]
            ok = (feats.ndim == 2 and logits.ndim == 2 and feats.shape[0] == logits.shape[0] == n
                  and feats.dtype == logits.dtype == np.float32
                  and np.isfinite(feats).all() and np.isfinite(logits).all())
        except Exception as e:  # any unreadable file (truncated, not a zip, wrong keys): recompute it
            log.warning("ignoring unreadable feature cache %s (%s: %s)", path, type(e).__name__, e)
            return None
        if not ok:
            log.warning("ignoring feature cache %s: not %d finite float32 rows", path, n)
            return None
        return ModelOutput(torch.from_numpy(feats), torch.from_numpy(logits))

    def store(self, model_key: str, set_name: str, data_key: str, out: ModelOutput) -> Path:
        buf = io.BytesIO()
        np.savez(buf, features=out.features.numpy(), logits=out.logits.numpy())
        # a lost cache entry is recomputed, so no fsync: the rename alone keeps readers from partial files
        return atomic_write(self.path(model_key, set_name, data_key), lambda f: f.write(buf.getvalue()),
                            fsync=False)


def default_feature_cache() -> FeatureCache:
    """The cache the CLI and the app share: ``$OOD_CACHE_DIR/features`` (else ``~/.cache/ood-lab/features``)."""
    return FeatureCache(default_cache_dir() / SUBDIR)
