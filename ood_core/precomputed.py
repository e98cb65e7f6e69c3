"""First views of the shipped checkpoints, computed once and shipped beside them.

A page's first render on a shipped checkpoint should not wait for a computation whose result
is the same on every machine. One view is stored so far: the Jacobian page's norms with the
page's defaults (:data:`JACOBIAN_VIEW`: the random-projection estimate, K = 16, the first 128
samples of the ID test split and of the first three OOD sets, seed 0). Computing them costs
about 2 s of backward passes on 2 CPU cores, most of that page's first render.

An entry is served only for exactly the inputs it was computed from: the checkpoint's content
digest (:func:`ood_core.checkpoint_store.file_version`), the set's name, a fingerprint of the
probed samples (:func:`ood_core.feature_cache.data_fingerprint`) and the same method, K, number
of samples and seed. Anything else (another checkpoint, a changed OOD set, other settings, the
user's own set) is computed as before. The numbers are :func:`ood_core.geometry.jacobian_norms`'s,
stored at full float64 precision and computed on the CPU. ``tests/test_precomputed.py`` recomputes
every entry, so a change to the estimator that moves a number fails there until
``make checkpoints`` (or :func:`write_precomputed`) rewrites :data:`PRECOMPUTED_FILE`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint_store import file_version, list_checkpoints
from .feature_cache import data_fingerprint
from .fileio import atomic_write
from .paths import SHIPPED_RESULTS

PRECOMPUTED_FILE = SHIPPED_RESULTS / "precomputed.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class JacobianView:
    """The Jacobian page's default settings (also its widgets' defaults)."""

    method: str = "estimate"
    n_proj: int = 16  # random projections K
    probe_size: int = 128  # samples per set
    n_sets: int = 3  # OOD sets shown: the benchmark's first ones
    seed: int = 0


JACOBIAN_VIEW = JacobianView()


def jacobian_view_sets(ood_names: list[str], view: JacobianView = JACOBIAN_VIEW) -> list[str]:
    """The sets the Jacobian page draws by default: the ID test split and the first OOD sets."""
    return ["id", *list(ood_names)[:view.n_sets]]


def compute_precomputed(folder: str | Path, view: JacobianView = JACOBIAN_VIEW) -> dict:
    """The stored views of every embedded-data checkpoint in ``folder`` (real-data ones need a
    data root and are skipped): ``{"format", "jacobian_view", "checkpoints": {digest: {"file",
    "jacobian_norms": {set: {"fingerprint", "values"}}}}}``."""
    from .checkpoint import checkpoint_benchmark, load_checkpoint
    from .geometry import jacobian_norms
    from .views import needs_data_root, set_inputs

    doc = {"format": FORMAT, "jacobian_view": dataclasses.asdict(view), "checkpoints": {}}
    for path in list_checkpoints(folder):
        model, meta = load_checkpoint(path, device="cpu")
        if needs_data_root((meta.get("dataset") or {}).get("name")):
            continue
        bench = checkpoint_benchmark(meta, name=path.name)
        entry = {}
        for name in jacobian_view_sets(list(bench.ood), view):
            x = set_inputs(bench, name)[:view.probe_size]
            norms = jacobian_norms(model, {name: x}, method=view.method, n_proj=view.n_proj, seed=view.seed)[name]
            entry[name] = {"fingerprint": data_fingerprint(x), "values": [float(v) for v in norms]}
        doc["checkpoints"][file_version(path)] = {"file": path.name, "jacobian_norms": entry}
    return doc


def write_precomputed(folder: str | Path, out: str | Path | None = None) -> Path:
    """:func:`compute_precomputed` of ``folder``, written atomically to ``out`` (default
    :data:`PRECOMPUTED_FILE`)."""
    text = json.dumps(compute_precomputed(folder), separators=(",", ":"))  # floats as repr: exact round trip
    return atomic_write(Path(out or PRECOMPUTED_FILE), lambda f: f.write(text.encode()))


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("checkpoints"), dict)
    return doc if ok else {}


def load_precomputed(path: str | Path | None = None) -> dict:
    """The stored views (see :func:`compute_precomputed`), re-read when the file changes; ``{}``
    when the file is missing, unreadable or of another format (then everything is computed)."""
    path = Path(path or PRECOMPUTED_FILE)
    try:
        st = path.stat()
    except OSError:
        return {}
    return _read(str(path), st.st_mtime_ns, st.st_size)


def stored_jacobian_norms(digest: str, set_name: str, x: torch.Tensor, method: str, n_proj: int,
                          probe_size: int | None, seed: int = 0, path: str | Path | None = None) -> np.ndarray | None:
    """The stored ``jacobian_norms`` of the first ``probe_size`` samples of ``x`` (the set
    ``set_name``) under the checkpoint whose content digest is ``digest``, when that is exactly
    what was stored (same settings, same samples); else None, and the caller computes them."""
    doc = load_precomputed(path)
    entry = (doc.get("checkpoints") or {}).get(digest)
    if not entry:
        return None  # not a shipped checkpoint: nothing to fingerprint
    view = doc.get("jacobian_view") or {}
    if (method, n_proj, probe_size, seed) != (view.get("method"), view.get("n_proj"), view.get("probe_size"),
                                              view.get("seed")):
        return None
    stored = (entry.get("jacobian_norms") or {}).get(set_name)
    if not stored or not isinstance(x, torch.Tensor):
        return None
    probe = x if probe_size is None else x[:probe_size]
    if stored.get("fingerprint") != data_fingerprint(probe) or len(stored.get("values", ())) != probe.shape[0]:
        return None
    return np.asarray(stored["values"], dtype=np.float64)
