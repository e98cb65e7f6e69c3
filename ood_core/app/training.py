"""What the Models page's training form needs from the core (no widgets): the datasets and
methods it offers with their labels, the defaults it fills in, the output file check and the
background job it starts (:func:`ood_core.jobs.start_training`)."""
from __future__ import annotations

from pathlib import Path

from ..data import DATASET_DESCRIPTIONS, DATASETS
from ..errors import OODCoreError
from ..jobs import checkpoint_path, default_file_name, free_path, methods_for, start_training  # noqa: F401
from ..landscape import DEFAULT_SCORE
from ..methods import METHODS, applicable_scores
from ..runtime import select_device
from ..scores import SCORES
from ..train import recommended_config

LANDSCAPE_RESOLUTION = 60  # grid points per axis of the per-epoch landscape (2-D inputs)


def dataset_names() -> list[str]:
    return list(DATASETS)


def dataset_label(name: str) -> str:
    return f"{name}: {DATASET_DESCRIPTIONS.get(name, '')}"


def method_label(name: str) -> str:
    return f"{name}: {METHODS[name].description}"


def device_name() -> str:
    """The device training picks here: cuda > mps > cpu, the first available."""
    return str(select_device("auto"))


def landscape_scores(method: str, bench) -> list[str]:
    """The method's scores that a landscape can show (computed from outputs, not inputs)."""
    scores = [n for n in applicable_scores(METHODS[method], bench) if not SCORES[n].requires_inputs]
    return scores or [DEFAULT_SCORE]


def default_landscape_score(scores: list[str]) -> str:
    return DEFAULT_SCORE if DEFAULT_SCORE in scores else scores[0]


def option_defaults(method: str, dataset: str) -> dict:
    """The form's defaults for ``method`` on ``dataset``: its recommended epochs, learning rate
    and seed (:func:`ood_core.train.recommended_config`) and a file name."""
    cfg = recommended_config(method)
    return {"epochs": int(cfg.epochs), "lr": float(cfg.lr), "seed": int(cfg.seed),
            "out_name": default_file_name(method, dataset)}


def output_path(folder: str | Path, name: str) -> tuple[Path | None, str | None]:
    """``(path, None)`` for a valid output file name in ``folder``, else ``(None, why not)``."""
    try:
        return checkpoint_path(folder, name), None
    except OODCoreError as e:
        return None, str(e)


def start(method: str, bench, out_path: Path, *, epochs: int, lr: float, seed: int, overwrite: bool,
          landscape_score: str | None = None, min_epoch_seconds: float = 0.0):
    """Start training ``method`` on ``bench`` in the background (a :class:`ood_core.jobs.TrainingJob`);
    2-D inputs record a landscape of ``landscape_score`` after every epoch."""
    config = recommended_config(method, epochs=int(epochs), lr=float(lr), seed=int(seed))
    plane = tuple(bench.input_shape) == (2,)
    return start_training(method, bench, config, out_path, overwrite=overwrite,
                          landscape_resolution=LANDSCAPE_RESOLUTION if plane else None,
                          landscape_score=landscape_score or DEFAULT_SCORE, min_epoch_seconds=min_epoch_seconds)


# --------------------------------------------------------------------------- import (the Import tab)
IMPORT_EXAMPLES = "tv:resnet18, tv:resnet50, tv:vit_b_16, tv:convnext_tiny, timm:resnet50"


def import_refusal(arch: str) -> str | None:
    """Why the app will not import ``arch`` (None when it will): only torchvision and timm
    architectures; the app never imports code named in a form or an upload."""
    from ..adapters import TIMM_PREFIX, TV_PREFIX

    if arch.startswith((TV_PREFIX, TIMM_PREFIX)) and len(arch.split(":", 1)[1]) > 0:
        return None
    return (f"the app imports torchvision (tv:NAME) or timm (timm:NAME) architectures, e.g. {IMPORT_EXAMPLES}; "
            "a model of your own code is imported from the command line: "
            "`ood-lab import --model pkg.module:factory --weights W --dataset D --out F`")


def import_to_checkpoint(arch: str, dataset: str, out_path: Path, *, weights: str | None = None,
                         resize: int | None = None, crop: int | None = None, data_root=None,
                         overwrite: bool = False, progress=None) -> dict:
    """Import ``arch`` with ``weights`` on ``dataset`` and save it to ``out_path`` (refused when
    the file exists unless ``overwrite``); returns the checkpoint's meta."""
    from ..checkpoint import save_checkpoint
    from ..importing import import_model

    why = import_refusal(arch)
    if why:
        raise OODCoreError(why)
    if out_path.exists() and not overwrite:
        raise OODCoreError(f"{out_path.name} already exists; tick Overwrite or choose another name")
    model, meta = import_model(arch, dataset, weights, preprocess={"resize": resize or None, "crop": crop or None},
                               data_root=data_root, progress=progress)
    save_checkpoint(out_path, model, meta)
    return meta
