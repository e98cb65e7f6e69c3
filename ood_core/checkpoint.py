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
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

from .adapters import ImportedModel, build_imported, is_imported_arch
from .checks import MAX_CLASSES, finite, seed as check_seed, whole
from .data.limits import MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_BYTES_ENV, checkpoint_byte_limit  # noqa: F401
from .errors import CheckpointError, OODCoreError
from .fileio import atomic_write, check_outputs, open_regular, zip_damage
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
    problem = unknown_method(meta.get("method")) if isinstance(meta.get("method"), str) else None
    if problem:  # a file that no later load would accept
        raise OODCoreError(f"cannot save {path.name}: {problem}; register a method of your own with "
                           "ood_core.methods.register_method")
    meta = _json_safe({**meta, "model": model.spec})
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta,
               "state_dict": {k: v.detach().cpu() for k, v in _weights_of(model).state_dict().items()}}
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def unknown_method(method) -> str | None:
    """Why ``method`` (a checkpoint's ``meta["method"]``) names no method of this lab, or None:
    None (no method), a registered method and ``import`` (an imported model) are fine."""
    from .importing import IMPORT_METHOD
    from .methods import METHODS

    if method is None or method in METHODS or method == IMPORT_METHOD:
        return None
    return (f"method {str(method)[:40]!r} is not a method of this lab ({', '.join(sorted(METHODS))}, "
            f"or {IMPORT_METHOD!r} for an imported model)")


def _weights_of(model) -> torch.nn.Module:
    """The module whose state dict a checkpoint stores: an imported model's network (its keys
    are then those of the original state dict), else the model."""
    return model.net if isinstance(model, ImportedModel) else model


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

    Before anything is unpickled, the CRC-32 of every member of the zip archive is checked
    (``torch.load`` does not): a file with damaged bytes, even inside a tensor, is refused with
    one line naming the file and the damaged member, never loaded with wrong weights.
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
    f.seek(0)
    damage = zip_damage(f)
    if damage is not None:
        member, why = damage
        tensors = _tensors_in_record(f, member)
        what = f" (holding {', '.join(tensors[:3])})" if tensors else ""
        raise CheckpointError(f"{name}: damaged: archive member {member}{what}: {why}; the file changed after it "
                              "was written (a bad copy or disk); restore or re-train it")
    f.seek(0)
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


def _tensors_in_record(f, member: str) -> list[str]:
    """The state-dict names of the tensors whose storage is the damaged tensor record ``member``
    (``.../data/N``), for the error message; [] when that cannot be told (best effort).

    ``torch.load`` reads a damaged record without complaint; its bytes then match the CRC of no
    record of the archive, while every intact storage matches its own record's."""
    if "/data/" not in member:
        return []
    try:
        f.seek(0)
        with zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
            size = archive.getinfo(member).file_size
        crcs = {i.CRC for i in infos}
        f.seek(0)
        raw = torch.load(f, map_location="cpu", weights_only=True)
        names = []
        for key, t in (raw.get("state_dict") or {}).items():
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.nbytes() != size:
                continue
            data = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
            if zlib.crc32(data) not in crcs:
                names.append(key)
        return names
    except Exception:  # noqa: BLE001 - only decorates the message of a file refused anyway
        return []


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _layer_weight(state: dict, module: str):
    """``(key, tensor)`` of ``module``'s weight in a state dict (also under spectral norm's
    ``parametrizations.weight.original``), or ``(module.weight, None)`` when it is not there."""
    for key in (f"{module}.weight", f"{module}.parametrizations.weight.original"):
        t = state.get(key)
        if isinstance(t, torch.Tensor):
            return key, t
    return f"{module}.weight", None


# the first layer of each lab backbone (its weight's dim 1 = input channels / features) and the
# layer whose weight's rows are the feature dimension (resnet18's is fixed at 512)
_FIRST_LAYER = {"smallcnn": "backbone.net.0.0", "mlp": "backbone.net.0", "resnet18": "backbone.net.conv1"}
_FEATURE_LAYER = {"smallcnn": "backbone.net.6.0", "mlp": "backbone.net.4"}
_DEFAULT_FEATURE_DIM = {"smallcnn": 128, "mlp": 32, "resnet18": 512}
_INPUT_DIMS = {"smallcnn": 3, "mlp": 1, "resnet18": 3}  # (C, H, W) images, (D,) vectors


def spec_problem(spec: dict, state: dict) -> str | None:
    """Why the model ``spec`` of a checkpoint does not fit the tensors of its ``state`` dict, or None.

    Checked before the model is built, so that metadata claiming e.g. ``feature_dim = 10**6``
    is refused without allocating the gigabytes such a model would take. Lab models: every size
    in the spec (classes, feature dimension, hidden width, input channels) must be the size of
    the weight that carries it (``head.weight`` gives K and d, the first layer the input
    channels, ...). Imported models (``tv:NAME``, ...): the spec's ``num_classes`` must be the
    rows of its head layer's weight; the other sizes are the architecture's own.
    """
    arch, k, shape = spec.get("arch"), spec.get("num_classes"), spec.get("input_shape")
    if not _positive_int(k):
        return f"num_classes must be a positive integer, got {k!r}"
    if not (isinstance(shape, (list, tuple)) and 1 <= len(shape) <= 3 and all(_positive_int(s) for s in shape)):
        return f"input_shape must be 1 to 3 positive integers, got {shape!r}"
    for key in ("feature_dim", "head_hidden"):
        if spec.get(key) is not None and not _positive_int(spec[key]):
            return f"{key} must be a positive integer, got {spec[key]!r}"

    def differs(module, want: dict[int, tuple[str, int]]):
        key, w = _layer_weight(state, module)
        if w is None:
            return f"the weights have no {key}"
        for dim, (what, value) in want.items():
            if w.dim() <= dim or w.shape[dim] != value:
                return f"the spec says {what}={value}, but {key} is {tuple(w.shape)} in the weights"
        return None

    if is_imported_arch(arch):
        head = spec.get("head_layer")
        return differs(head, {0: ("num_classes", k)}) if isinstance(head, str) and head else None
    if arch not in _FIRST_LAYER:
        return None  # build_model names the unknown architecture
    if len(shape) != _INPUT_DIMS[arch]:
        return f"input_shape {list(shape)} does not suit the {arch} backbone ({_INPUT_DIMS[arch]} numbers)"
    d = 512 if arch == "resnet18" else (spec.get("feature_dim") or _DEFAULT_FEATURE_DIM[arch])
    head = spec.get("head", "linear")
    checks = [(_FIRST_LAYER[arch], {1: ("input_shape[0]", shape[0])})]
    if arch in _FEATURE_LAYER:
        checks.append((_FEATURE_LAYER[arch], {0: ("feature_dim", d)}))
    if head == "mlp-bn":
        hidden = spec.get("head_hidden") or 256
        checks += [("neck.0", {0: ("head_hidden", hidden), 1: ("feature_dim", d)}),
                   ("head", {0: ("num_classes", k), 1: ("head_hidden", hidden)})]
    elif head == "centers":
        key, w = "head.centers", state.get("head.centers")
        if not isinstance(w, torch.Tensor):
            return "the weights have no head.centers"
        if tuple(w.shape) != (k, d):
            return f"the spec says num_classes={k}, feature_dim={d}, but {key} is {tuple(w.shape)} in the weights"
    else:
        checks.append(("head", {0: ("num_classes", k), 1: ("feature_dim", d)}))
    for module, want in checks:
        problem = differs(module, want)
        if problem:
            return problem
    return None


def load_checkpoint(source, device: str | torch.device = "cpu", allow_code: bool = False) -> tuple[OODModel, dict]:
    """Load ``(model, meta)`` from a checkpoint path (or its bytes); the model is in eval mode.

    ``features, logits = model(x)``. Raises :class:`CheckpointError` with one clear line for
    a missing, truncated, damaged, foreign, code-carrying or mismatched file (a model spec
    whose sizes are not those of the stored weights is refused before the model is built, see
    :func:`spec_problem`). A checkpoint written by ``import`` of a torchvision/timm model is
    rebuilt from its name; one of your own ``pkg.module:factory`` model imports that module,
    so it needs ``allow_code=True`` (or ``$OOD_ALLOW_CODE`` naming the module, see
    :mod:`ood_core.adapters`).
    """
    raw = read_checkpoint(source)
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    meta = raw["meta"]
    spec = meta.get("model")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{name}: checkpoint metadata has no model spec")
    problem = spec_problem(spec, raw["state_dict"])  # the spec against the weights present, before anything is built
    if problem:
        raise CheckpointError(f"{name}: checkpoint weights do not fit the {spec.get('arch')} model they claim: "
                              f"{problem}")
    check_meta(meta)  # then the rest of the metadata
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


def benchmark_problem(meta: dict, bench) -> str | None:
    """Why ``bench`` (rebuilt from ``meta["dataset"]``) does not fit the checkpoint's model, or None:
    its number of classes must be the model's outputs, its input shape the model's, and its
    task the one recorded at training time."""
    spec = meta.get("model") or {}
    ds = meta.get("dataset") or {}
    k, shape = spec.get("num_classes"), spec.get("input_shape")
    label = f"dataset {bench.name!r}" + (f" (known classes {list(bench.known)})" if bench.known else "")
    if shape is not None and tuple(bench.input_shape) != tuple(shape):
        return f"the {label} has inputs of shape {tuple(bench.input_shape)}, but the model takes {tuple(shape)}"
    if k is not None and bench.num_classes != k:
        return f"the {label} has {bench.num_classes} classes, but the model outputs {k}"
    if ds.get("task") and ds["task"] != bench.task:
        return f"the {label} is {bench.task}, but the model was trained for a {ds['task']} task"
    return None


def checkpoint_benchmark(meta: dict, data_root=None, download: bool | None = None, name: str | None = None,
                         bench=None):
    """The benchmark a checkpoint was trained on, rebuilt from its metadata
    (:func:`ood_core.data.load_benchmark_from_spec`) and checked against its model
    (:func:`benchmark_problem`): CheckpointError, one line, when the metadata names a dataset
    that does not fit the weights (another class count or input shape), never silent numbers.
    ``bench``: the benchmark of ``meta["dataset"]`` already built (the app shares one between
    the checkpoints of one dataset); it is then only checked."""
    from .data import load_benchmark_from_spec

    if bench is None:
        bench = load_benchmark_from_spec(meta.get("dataset"), data_root=data_root, download=download)
    problem = benchmark_problem(meta, bench)
    if problem:
        raise CheckpointError(f"{name + ': ' if name else ''}the checkpoint's metadata does not fit its weights: "
                              f"{problem}")
    return bench


def check_meta(meta: dict) -> None:
    """Refuse (CheckpointError, one line) checkpoint metadata that nothing should be built from:
    a method that is not a name or not one of this lab's (nor ``import``), loss parameters that
    are not finite numbers (or true/false, names), a dataset spec with a non-text name, non-whole or out-of-range seeds or known
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
    problem = unknown_method(method)
    if problem:
        raise CheckpointError(f"checkpoint metadata: {problem}; the file was written by another version of the lab, "
                              "edited, or saved with a method registered in another process (register it with "
                              "ood_core.methods.register_method before loading)")
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
        repeated = sorted({k for k in known if known.count(k) > 1})
        if repeated:
            raise CheckpointError(f"checkpoint metadata: known class {repeated[0]} is listed more than once in "
                                  f"{known[:20]}; a model's known classes are distinct")
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
