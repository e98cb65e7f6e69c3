"""``import``: turn a model trained elsewhere into a lab checkpoint.

    ood-lab import --model tv:resnet18 --weights my.pth --dataset imagefolder:DIR --out lab.pt

:func:`import_model` builds the architecture (:mod:`ood_core.adapters`), loads the weights,
checks that its outputs match the dataset's classes, evaluates it on the dataset's OOD sets
and returns ``(model, meta)`` for :func:`ood_core.checkpoint.save_checkpoint`. The checkpoint
is plain data (weights-only loadable) with ``meta["method"] == "import"``; ``evaluate``,
``geometry``, ``project``, ``features`` and every app page use it like a trained one.
"""
from __future__ import annotations

import datetime as _dt
import math

import torch

from .adapters import (build_imported, check_outputs, is_imported_arch, load_weights,
                       preprocess_from_weights)
from .data import IMAGE_FOLDER_PREFIX, load_benchmark
from .checks import MAX_IMAGE_SIDE
from .errors import OODCoreError
from .runtime import library_versions, select_device

IMPORT_METHOD = "import"  # meta["method"] of an imported checkpoint (not a training recipe)
PREPROCESS_KEYS = ("resize", "crop", "mean", "std")


def import_model(model: str, dataset: str, weights: str | None = None, *, feature_layer: str | None = None,
                 preprocess: dict | None = None, download: bool = False, data_root=None, allow_code: bool = False,
                 device: str = "auto", evaluate_after: bool = True, batch_size: int = 128, progress=None):
    """``(model, meta)`` of architecture ``model`` with ``weights`` on ``dataset``.

    ``model``: ``tv:NAME``, ``timm:NAME`` or ``pkg.module:factory`` (needs ``allow_code=True``).
    ``weights``: a ``.pth``/``.pt``/``.safetensors`` file or a torchvision weights enum name
    (fetched only with ``download``); None keeps the random initialisation (recorded as such).
    ``preprocess``: ``resize``, ``crop``, ``mean``, ``std`` overriding those of the weights
    (:func:`ood_core.adapters.preprocess_from_weights`); an ``imagefolder:`` dataset is loaded
    at that resize/crop, a preset keeps its size and the model resizes its inputs.
    ``evaluate_after``: score the ID test split against every OOD set found into ``meta["metrics"]``.
    """
    if not is_imported_arch(model):
        raise OODCoreError(f"--model {model!r}: pass tv:NAME (torchvision), timm:NAME or pkg.module:factory; the "
                           "lab's own architectures are trained with `train`")
    unknown_keys = set(preprocess or {}) - set(PREPROCESS_KEYS)
    if unknown_keys:
        raise OODCoreError(f"preprocess keys {sorted(unknown_keys)}: use {', '.join(PREPROCESS_KEYS)}")
    pre = {**preprocess_from_weights(model, weights), **{k: v for k, v in (preprocess or {}).items() if v is not None}}
    _check_preprocess(pre)
    image_folder = dataset.startswith(IMAGE_FOLDER_PREFIX)
    bench = load_benchmark(dataset, data_root=data_root, download=download,
                           preprocess={k: pre[k] for k in ("resize", "crop")} if image_folder else None)
    if len(bench.input_shape) != 3:
        raise OODCoreError(f"dataset {bench.name!r} is not images ({bench.input_shape}); imported models take images")
    net = build_imported(model, bench.num_classes, bench.input_shape, feature_layer=feature_layer, preprocess=pre,
                         allow_code=allow_code)
    source = "random initialisation (no weights given)"
    if weights is not None:
        source = load_weights(net, weights, download=download)
    feature_dim = check_outputs(net, bench.num_classes)
    net.eval()
    meta = {
        "method": IMPORT_METHOD,
        "imported": {"arch": model, "weights": source, "feature_layer": net.spec["feature_layer"],
                     "head_layer": net.spec["head_layer"], "feature_dim": feature_dim, "preprocess": pre},
        "dataset": bench.spec(),
        "model": net.spec,
        "history": [],
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if evaluate_after:
        from .evaluate import evaluate
        from .methods import default_score_names

        dev = select_device(device)
        net.to(dev)
        with torch.no_grad():
            meta["metrics"] = evaluate(net, bench, score_names=default_score_names(meta, bench),
                                       batch_size=batch_size, progress=progress, skip_unfit=True).report
        net.to("cpu")
    return net, meta


def _check_preprocess(pre: dict) -> None:
    for key in ("resize", "crop"):
        v = pre.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_IMAGE_SIDE):
            raise OODCoreError(f"preprocess {key} must be a whole number of pixels in 1..{MAX_IMAGE_SIDE}, got {v!r}")
    for key in ("mean", "std"):
        v = pre.get(key)
        if v is not None and (not isinstance(v, (list, tuple)) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise OODCoreError(f"preprocess {key} must be a list of finite numbers (one per channel), got {v!r}")
    if pre.get("std") and any(float(s) <= 0 for s in pre["std"]):
        raise OODCoreError(f"preprocess std must be > 0 per channel, got {pre['std']}")
    if pre.get("mean") and pre.get("std") and len(pre["mean"]) != len(pre["std"]):
        raise OODCoreError("preprocess mean and std need one value per channel each")
