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
import pickle
import zipfile
from pathlib import Path

import torch

from .adapters import ImportedModel, build_imported, is_imported_arch
from .checks import MAX_CLASSES, finite, seed as check_seed, whole
from .errors import CheckpointError, OODCoreError
from .fileio import atomic_write, check_outputs
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


def read_checkpoint(source) -> dict:
    """Read and validate a checkpoint archive from a path or bytes; return the raw dict."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        p = Path(source)
        if not p.exists():
            raise CheckpointError(f"{p}: no such checkpoint file")
        if p.is_dir():
            raise CheckpointError(f"{p}: is a folder; pass a checkpoint file (.pt)")
        try:
            source = p.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{p}: cannot read the checkpoint ({e.strerror or e})") from None
    if not zipfile.is_zipfile(io.BytesIO(source)):
        raise CheckpointError(f"{name}: not a PyTorch checkpoint archive (wrong file type, or a truncated file)")
    try:
        raw = torch.load(io.BytesIO(source), map_location="cpu", weights_only=True)
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
    check_meta(meta)  # before anything is built from it
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


def check_meta(meta: dict) -> None:
    """Refuse (CheckpointError, one line) checkpoint metadata that nothing should be built from:
    a method that is not a name, loss parameters that are not finite numbers (or true/false,
    names), a dataset spec with a non-text name, non-whole or out-of-range seeds or known
    classes, and a model spec that disagrees with its dataset (input shape, number of
    classes). The numbers of the model spec itself (``num_classes`` 10^8, a NaN scale, ...)
    are checked by the model builders before any layer is allocated."""
    from .methods import METHODS

    def bad(what: str, value, want: str):
        text = repr(value)
        raise CheckpointError(f"checkpoint metadata: {what} must be {want}, got "
                              f"{text[:80] + '...' if len(text) > 80 else text}")

    method = meta.get("method")
    if method is not None and not isinstance(method, str):
        bad("'method'", method, "a method name")
    params = meta.get("loss_params")
    if params is not None:
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            bad("'loss_params'", params, "a mapping of parameter names to values")
        defaults = METHODS[method].loss_params if method in METHODS else {}
        for key, value in params.items():
            numeric = isinstance(defaults.get(key), (int, float)) and not isinstance(defaults.get(key), bool)
            if numeric or isinstance(value, float):
                finite(value, f"checkpoint metadata: loss parameter {key!r}", error=CheckpointError)
            elif value is not None and not isinstance(value, (bool, int, str)):
                bad(f"loss parameter {key!r}", value, "a number, true/false or a name")
    ds = meta.get("dataset")
    if ds is None:
        return
    if not isinstance(ds, dict):
        bad("'dataset'", ds, "a dataset spec (name, known, seeds)")
    if not isinstance(ds.get("name"), str):
        bad("the dataset name", ds.get("name"), "text")
    for key in ("split_seed", "ood_seed"):
        if key in ds:
            check_seed(ds[key], f"checkpoint metadata: dataset {key}", error=CheckpointError)
    known = ds.get("known")
    if known is not None:
        if not isinstance(known, list):
            bad("the dataset's known classes", known, "a list of class indices")
        for k in known:
            whole(k, "checkpoint metadata: each known class", 0, MAX_CLASSES, error=CheckpointError)
    spec = meta["model"]
    if "input_shape" in ds and "input_shape" in spec and list(ds["input_shape"]) != list(spec["input_shape"]):
        raise CheckpointError(f"checkpoint metadata: the model takes inputs of shape {spec['input_shape']} but its "
                              f"dataset {ds['name']} has inputs of shape {ds['input_shape']}")
    names = ds.get("class_names")
    if isinstance(names, list) and "num_classes" in spec and spec["num_classes"] != len(names):
        raise CheckpointError(f"checkpoint metadata: the model has {str(spec['num_classes'])[:20]} classes but its "
                              f"dataset {ds['name']} names {len(names)}")


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
    checkpoints = sorted(folder.glob("*.pt"))
    out = folder / "manifest.json"
    check_outputs({"the manifest": out}, {"checkpoint": checkpoints})  # a manifest.json linked to a .pt
    entries = [manifest_entry(p) for p in checkpoints]
    text = json.dumps({"checkpoints": entries}, indent=2) + "\n"
    return atomic_write(out, lambda f: f.write(text.encode()))
