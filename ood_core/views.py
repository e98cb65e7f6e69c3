"""What the app shows, as plain data (no Streamlit): a checkpoint's evaluation as a pickleable
dict, the inputs of a scored set, the names of a sample's labels and the real-data presets
found under a data root. ``ood_core.app`` caches and draws these; a notebook can call them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import checkpoint_benchmark
from .errors import OODCoreError
from .evaluate import evaluate
from .methods import default_score_names, method_score_params
from .data.real import PRESETS, preset_status

def evaluate_model(model, meta: dict, outputs: dict | None = None, bench=None,
                   extra_ood: dict[str, torch.Tensor] | None = None, detectors: tuple[str, ...] = ()) -> dict:
    """Evaluate ``model`` on its benchmark; a pickleable dict ``{report, scores, table}``.

    ``scores`` maps ``"SET/SCORE"`` (``"id/SCORE"`` for the ID test split) to a 1-D numpy
    array; ``table`` is :meth:`Evaluation.table`'s list of row dicts. ``outputs``: model
    outputs already extracted (reused, see :func:`outputs_cached`); ``bench``: the benchmark
    already rebuilt from ``meta`` (default: rebuilt here); ``extra_ood``: the user's own OOD
    sets ``{name: tensor}`` in the model's input format (group ``user``); ``detectors``: more
    registry scores to report beside the checkpoint's own (see :func:`detector_options`). A
    score that cannot be fitted on this model is left out and named in
    ``report["skipped_scores"]`` with the reason.
    """
    bench = bench if bench is not None else checkpoint_benchmark(meta)
    names = default_score_names(meta, bench)
    names = names + [d for d in detectors if d not in names]
    result = evaluate(model, bench, score_names=names, outputs=outputs,
                      extra_ood=extra_ood, score_params=method_score_params(meta), skip_unfit=True)
    return {"report": result.report,
            "scores": {k: np.asarray(v) for k, v in result.scores.items()},
            "table": result.table()}










def set_inputs(bench, set_name: str, user_sets: dict | None = None) -> torch.Tensor:
    """The inputs of one scored set: ``"id"`` is the ID test split, any other name an OOD set
    of the benchmark or of ``user_sets`` (the user's upload). OODCoreError for an unknown name."""
    sources = bench.inputs(user_sets, training=False)  # the one set-name -> inputs mapping
    if set_name not in sources:
        raise OODCoreError(f"no set named {set_name!r}; this benchmark has: {', '.join(sources)}")
    return sources[set_name]


def scored_sets(outputs: dict) -> dict:
    """The ID test split (``"id"``) and the OOD sets of a benchmark's outputs (no train/val)."""
    return {name: out for name, out in outputs.items() if name not in ("train", "val")}


def needs_data_root(dataset: str | None) -> bool:
    """Whether ``dataset`` (a name from a checkpoint or the registry) is read from the data root."""
    return dataset in PRESETS


def preset_status_markdown(root: str) -> str:
    """A short markdown list of the real-data presets and which of their sets are under ``root``."""
    if not Path(root).is_dir():
        return f"`{root}` is not a folder."
    lines = []
    for preset in PRESETS:
        status = preset_status(preset, root)
        id_name = PRESETS[preset]["id"]
        if not status[id_name]:
            lines.append(f"- `{preset}`: missing")
            continue
        sets = ", ".join(f"{n.rstrip('?')} {'✓' if ok else '✗'}" for n, ok in status.items() if n != id_name)
        ready = all(ok for n, ok in status.items() if not n.endswith("?"))
        lines.append(f"- `{preset}`: {'ready' if ready else 'OOD sets missing'} ({sets or 'no OOD sets'})")
    return "\n".join(lines)


def label_names(y, class_names) -> list[str]:
    """The names of one sample's labels: its class (a scalar) or the labels present in a
    multi-hot vector; a class without a name is shown by its index."""
    present = [int(y)] if np.ndim(y) == 0 else np.flatnonzero(y).tolist()
    return [str(class_names[k]) if k < len(class_names) else str(k) for k in present]


def describe_sample(labels, i: int, class_names) -> str:
    """``"#i (class c)"`` or ``"#i (labels a, b)"`` for ID test sample ``i``."""
    kind = "class" if np.ndim(labels[i]) == 0 else "labels"
    return f"#{i} ({kind} {', '.join(label_names(labels[i], class_names))})"


def other_class_index(labels) -> int:
    """The first sample whose class differs from sample 0's (a path between two classes), else
    sample 1 (multi-label data, or a single class)."""
    labels = np.asarray(labels)
    differs = labels != labels[0] if labels.ndim == 1 else np.zeros(0, dtype=bool)
    return int(np.flatnonzero(differs)[0]) if differs.any() else min(1, len(labels) - 1)


def detector_options(task: str, shown: list[str]) -> list[str]:
    """Registry scores for ``task`` not among ``shown``, cheapest first (those that need the
    inputs last): what a page offers to add beside a checkpoint's own scores."""
    from .scores import SCORES, scores_for_task

    rest = [s for s in scores_for_task(task) if s not in shown]
    return sorted(rest, key=lambda s: SCORES[s].cost == "inputs")
