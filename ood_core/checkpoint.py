"""Checkpoints: weights + JSON-able metadata, written atomically, read with the weights-only loader.

File layout (a ``torch.save`` archive of plain containers, nothing else)::

    {"format": "ood_core.checkpoint", "format_version": 1,
     "meta": {method, dataset, model spec, hyper-parameters, metrics, versions, ...},
     "state_dict": {name: tensor}}

Loading uses ``torch.load(weights_only=True)``, which refuses any pickled object other than
tensors and primitive containers, so a checkpoint can never run code on load.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import BinaryIO

import torch

from .adapters import ImportedModel, build_imported, is_imported_arch
from .errors import CheckpointError, OODCoreError
from .fileio import atomic_write, open_regular
from .models import OODModel, build_model

FORMAT = "ood_core.checkpoint"
FORMAT_VERSION = 1


def _json_safe(meta: dict) -> dict:
    """Round-trip through JSON so only plain types are stored (numpy scalars fail loudly here)."""
    try:
        return json.loads(json.dumps(meta))
    except TypeError as e:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {e}") from None


def save_checkpoint(path, model: OODModel, meta: dict) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically.

    The archive is written to a temporary file in the same folder, flushed and fsync'ed,
    then renamed over ``path``: a crash mid-write leaves any previous file intact (and at
    most a hidden ``.NAME.*.tmp`` that no ``*.pt`` glob matches). A ``meta["partial"]``
    entry marks the weights of an unfinished run (see ``train(checkpoint=...)``).
    """
    path = Path(path)
    meta = _json_safe({**meta, "model": model.spec})
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta,
               "state_dict": {k: v.detach().cpu() for k, v in _weights_of(model).state_dict().items()}}
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def _weights_of(model) -> torch.nn.Module:
    """The module whose state dict a checkpoint stores: an imported model's network (its keys
    are then those of the original state dict), else the model."""
    return model.net if isinstance(model, ImportedModel) else model


MAX_CHECKPOINT_BYTES = 4 << 30  # a checkpoint file read for loading or hashing (4 GiB; the lab's own are < 10 MB)
MAX_CHECKPOINT_BYTES_ENV = "OOD_MAX_CHECKPOINT_BYTES"


def checkpoint_byte_limit() -> int:
    """Bytes a checkpoint file may hold: :data:`MAX_CHECKPOINT_BYTES` or ``$OOD_MAX_CHECKPOINT_BYTES``."""
    from .data.limits import env_limit

    return env_limit(MAX_CHECKPOINT_BYTES_ENV, MAX_CHECKPOINT_BYTES)


def open_checkpoint_file(path) -> BinaryIO:
    """``path`` opened for reading, after checking that it is a regular file (not a folder,
    FIFO, device or socket, also behind a link: a FIFO blocks, ``/dev/zero`` never ends) of at
    most :func:`checkpoint_byte_limit` bytes; CheckpointError with one line otherwise."""
    p = Path(path)
    if not os.path.lexists(p):
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder; pass a checkpoint file (.pt)")
    limit = checkpoint_byte_limit()
    return open_regular(p, CheckpointError, max_bytes=limit,
                        limit_hint=f"not a checkpoint of this lab? raise the limit with the environment variable "
                                   f"{MAX_CHECKPOINT_BYTES_ENV}")


def read_checkpoint(source) -> dict:
    """Read and validate a checkpoint archive from a path or bytes; return the raw dict.

    A path is checked before anything is read (:func:`open_checkpoint_file`) and read as a
    stream, not copied into memory first."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        return _read_archive(io.BytesIO(source), name)
    f = open_checkpoint_file(source)
    with f:
        return _read_archive(f, name)


def _read_archive(f, name: str) -> dict:
    try:
        is_zip = zipfile.is_zipfile(f)
        f.seek(0)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read the checkpoint ({e.strerror or e})") from None
    if not is_zip:
        raise CheckpointError(f"{name}: not a PyTorch checkpoint archive (wrong file type, or a truncated file)")
    try:
        raw = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is long; keep the line naming the refused object
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "global" in ln.lower()]
        detail = lines[0] if lines else "unsupported object"
        raise CheckpointError(f"{name}: refused: the file holds objects other than tensors and plain data, "
                              f"which could run code when unpickled ({detail[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{name}: not a readable PyTorch checkpoint (corrupt or truncated: {detail})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{name}: a PyTorch file, but not an ood_core checkpoint "
                              "(expected keys format/meta/state_dict; train one with `python -m ood_core train`)")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{name}: written by a newer ood_core (format {raw['format_version']}); upgrade to load it")
    if not isinstance(raw.get("meta"), dict) or not isinstance(raw.get("state_dict"), dict):
        raise CheckpointError(f"{name}: checkpoint is missing its metadata or weights")
    return raw


def load_checkpoint(source, device: str | torch.device = "cpu", allow_code: bool = False) -> tuple[OODModel, dict]:
    """Load ``(model, meta)`` from a checkpoint path (or its bytes); the model is in eval mode.

    ``features, logits = model(x)``. Raises :class:`CheckpointError` with one clear line for
    a missing, truncated, foreign, code-carrying or mismatched file. A checkpoint written by
    ``import`` of a torchvision/timm model is rebuilt from its name; one of your own
    ``pkg.module:factory`` model imports that module, so it needs ``allow_code=True`` (or
    ``$OOD_ALLOW_CODE`` naming the module, see :mod:`ood_core.adapters`).
    """
    raw = read_checkpoint(source)
    meta = raw["meta"]
    spec = meta.get("model")
    if not isinstance(spec, dict):
        raise CheckpointError("checkpoint metadata has no model spec")
    try:
        model = build_imported(**spec, allow_code=allow_code) if is_imported_arch(spec.get("arch")) \
            else build_model(**spec)
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint model spec cannot be built: {e}") from None
    except OODCoreError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint model spec cannot be built: {e}") from None
    target = _weights_of(model)
    try:
        target.load_state_dict(raw["state_dict"], strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"checkpoint weights do not fit the {spec.get('arch')} model they claim: {detail}") from None
    model.to(device).eval()
    return model, meta


def manifest_entry(path) -> dict:
    """Summary of one checkpoint for ``manifest.json``: what it is and how well it did."""
    meta = read_checkpoint(path)["meta"]
    metrics = meta.get("metrics") or {}
    entry = {
        "file": Path(path).name,
        "method": meta.get("method"),
        "dataset": (meta.get("dataset") or {}).get("name"),
        "known": (meta.get("dataset") or {}).get("known"),
        "arch": (meta.get("model") or {}).get("arch"),
        "seed": (meta.get("train_config") or {}).get("seed"),
        "epochs": (meta.get("train_config") or {}).get("epochs"),
        "id_metrics": {k: v for k, v in metrics.items() if k.startswith("id_")},
        "auroc_group_means": {g: {s: m["auroc"] for s, m in per.items()}
                              for g, per in (metrics.get("group_means") or {}).items()},
    }
    if meta.get("partial"):  # the last good state of an unfinished run (no OOD metrics)
        entry["partial"] = meta["partial"]
    return entry


def write_manifest(folder) -> Path:
    """Write ``folder/manifest.json`` listing every ``*.pt`` checkpoint in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: " + ("is a file; pass the folder holding the checkpoints"
                                               if folder.exists() else "no such folder"))
    entries = [manifest_entry(p) for p in sorted(folder.glob("*.pt"))]
    text = json.dumps({"checkpoints": entries}, indent=2) + "\n"
    return atomic_write(folder / "manifest.json", lambda f: f.write(text.encode()))
