"""Feature extraction and the one evaluator.

:func:`extract_outputs` runs the model once per dataset in batches and keeps features and
logits on the CPU; every score then reads those cached outputs. :func:`evaluate` returns an
:class:`Evaluation` holding a JSON-able report (one entry per OOD set and score, plus
group means: near, far-real, far-synthetic, ...) and the per-sample scores that every number can be recomputed from.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import numpy as np
import torch

from .data import Benchmark
from .errors import DataError, OODCoreError
from .feature_cache import FeatureCache, data_fingerprint, model_fingerprint
from .metrics import accuracy, mean_average_precision, ood_metrics
from .models import ModelOutput, OODModel
from .runtime import select_device
from .scores import make_score, scores_for_task

log = logging.getLogger(__name__)

FPR95_DEFINITION = "FPR on OOD at the threshold that keeps 95% of ID (ID = positive class)"


@torch.no_grad()
def extract_outputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512,
                    device: str | torch.device | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ModelOutput:
    """Features and logits of `x` (on the CPU), in eval mode, `batch_size` samples at a time.

    ``progress(done, total)`` is called after every batch (samples done, samples in all)."""
    if x.shape[0] == 0:
        raise DataError("cannot extract features of an empty set")
    device = select_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        for i in range(0, x.shape[0], batch_size):
            out = model(x[i:i + batch_size].to(device))
            feats.append(out.features.float().cpu())
            logits.append(out.logits.float().cpu())
            if progress is not None:
                progress(min(i + batch_size, x.shape[0]), x.shape[0])
    finally:
        model.train(was_training)
    return ModelOutput(torch.cat(feats), torch.cat(logits))


@torch.no_grad()
def output_widths(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """``(feature dim, number of logits)`` of ``model``'s outputs on inputs like ``x``.

    A lab model's features are its head's input, so both are its head weight's shape
    (``(K, d)``; ``centers`` for the centres head); any other model (an imported one, whose
    features may come from another layer) runs one sample of ``x`` to see. What a cached
    entry must hold (see :meth:`FeatureCache.load`)."""
    if isinstance(model, OODModel):
        w = getattr(model.head, "weight", None)
        w = w if isinstance(w, torch.Tensor) else getattr(model.head, "centers", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            return int(w.shape[1]), int(w.shape[0])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(x[:1].to(device))
    finally:
        model.train(was_training)
    return int(out.features.reshape(1, -1).shape[1]), int(out.logits.reshape(1, -1).shape[1])


def check_input_shape(x: torch.Tensor, input_shape, name: str) -> None:
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"OOD set {name!r} has samples of shape {tuple(x.shape[1:])}; "
                        f"the model takes {tuple(input_shape)}")
    if not torch.isfinite(x).all():
        raise DataError(f"OOD set {name!r} contains NaN/Inf values")


def extract_benchmark_outputs(model: torch.nn.Module, bench: Benchmark, sets: list[str] | None = None,
                              extra_ood: dict[str, torch.Tensor] | None = None, batch_size: int = 512,
                              outputs: dict[str, ModelOutput] | None = None, cache: FeatureCache | None = None,
                              progress: Callable[[str, int, int, bool], None] | None = None,
                              replace_ood: bool = False
                              ) -> dict[str, ModelOutput]:
    """Model outputs of a benchmark's splits and OOD sets, each extracted once.

    Keys: ``"train"`` and ``"val"`` (ID splits), ``"id"`` (the ID test split), every OOD
    set of ``bench.ood`` and of ``extra_ood``. ``sets`` picks which keys (default: ``"id"``,
    ``"train"`` and every OOD set). Entries already in ``outputs`` are reused, not
    recomputed; the returned dict is ``outputs`` with the missing ones added. Every score
    and geometry function reads these, so one forward pass per set serves them all.

    ``cache`` (a :class:`~ood_core.feature_cache.FeatureCache`): missing sets are read from it
    when this model's outputs on the same data are there, with exactly this model's feature
    dimension and number of logits (:func:`output_widths`), else extracted and stored (a bad
    entry is replaced).
    ``progress(set_name, done, total, from_cache)`` is called after every batch of an
    extraction, and once (``done == total``, ``from_cache=True``) for a set read from the cache.
    ``replace_ood``: ``extra_ood`` may reuse a built-in OOD set's name (never a split's), for
    :func:`evaluate`'s ``ood_sets``; user sets are refused such names otherwise.
    """
    sources = bench.inputs(extra_ood, replace_ood=replace_ood)
    wanted = sets if sets is not None else ["id", "train", *bench.ood, *(extra_ood or {})]
    missing = [k for k in wanted if k not in sources and k not in (outputs or {})]
    if missing:
        raise DataError(f"no set named {missing[0]!r}; this benchmark has: {', '.join(sources)}")
    outputs = {} if outputs is None else outputs
    todo = [k for k in wanted if k not in outputs]
    model_key = model_fingerprint(model) if cache is not None and todo else None
    widths: dict[tuple, tuple[int, int]] = {}  # per input shape: what a cache entry must hold
    for key in todo:
        x = sources[key]
        data_key = data_fingerprint(x) if cache is not None else None
        out = None
        if cache is not None:
            shape = tuple(x.shape[1:])
            if shape not in widths and x.shape[0]:
                widths[shape] = output_widths(model, x)
            out = cache.load(model_key, key, data_key, x.shape[0], widths=widths.get(shape))
        if out is not None:
            if progress is not None:
                progress(key, x.shape[0], x.shape[0], True)
        else:
            step = None if progress is None else (lambda done, total, key=key: progress(key, done, total, False))
            out = extract_outputs(model, x, batch_size, progress=step)
            if cache is not None:
                try:
                    cache.store(model_key, key, data_key, out)
                except OSError as e:  # a full or read-only disk costs the cache, not the result
                    log.warning("could not write the feature cache for %s (%s)", key, e)
        outputs[key] = out
    return outputs


@dataclasses.dataclass
class Evaluation:
    """``report``: JSON-able metrics; ``scores``: per-sample arrays keyed ``"SET/SCORE"``
    (``"id/SCORE"`` for the ID test set); ``outputs``: cached model outputs per set."""

    report: dict
    scores: dict[str, np.ndarray]
    outputs: dict[str, ModelOutput]

    def table(self) -> list[dict]:
        """Tidy rows: one per (OOD set, score), then the mean of each OOD group."""
        rows = []
        for set_name, per_score in self.report["ood"].items():
            for score, m in per_score.items():
                rows.append({"ood_set": set_name, "group": self.report["groups"][set_name], "score": score, **m})
        for group, per_score in self.report["group_means"].items():
            for score, m in per_score.items():
                rows.append({"ood_set": f"mean ({group})", "group": group, "score": score, **m})
        return rows


def id_metrics(task: str, out: ModelOutput, y: torch.Tensor) -> dict[str, float]:
    """``{"id_accuracy": ...}`` (multiclass) or ``{"id_map": ...}`` (multilabel: mAP over labels) of a labelled split."""
    if task == "multilabel":
        return {"id_map": mean_average_precision(out.logits.numpy(), y.numpy())}
    return {"id_accuracy": accuracy(out.logits.numpy(), y.numpy())}


def evaluate(model: torch.nn.Module, bench: Benchmark, ood_sets: dict[str, torch.Tensor] | None = None,
             score_names: list[str] | None = None, extra_ood: dict[str, torch.Tensor] | None = None,
             batch_size: int = 512, device: str | torch.device | None = None,
             outputs: dict[str, ModelOutput] | None = None, cache: FeatureCache | None = None,
             progress: Callable[[str, int, int, bool], None] | None = None,
             score_params: dict[str, dict] | None = None, skip_unfit: bool = False) -> Evaluation:
    """Score the ID test split and each OOD set with every requested score.

    ``ood_sets`` defaults to all of ``bench.ood``; ``extra_ood`` adds user sets (group
    ``user``). ``score_names`` defaults to every registered score for the task.
    ``score_params`` ``{score name: keyword parameters}`` builds those scores with
    ``make_score(name, **params)`` (entries for scores not evaluated are ignored); for a
    checkpoint pass :func:`ood_core.methods.method_score_params` of its meta, so e.g. MSP on
    a ``movr`` model uses the training scale. ``report["score_params"]`` records the
    parameters each score was built with (``{}`` = its defaults).
    ``skip_unfit``: a score whose fit is refused on this model and data (e.g. ViM when the
    training features span fewer dimensions than its subspace) is left out and named with the
    reason in ``report["skipped_scores"]`` instead of failing the whole evaluation; for
    default score lists (an ``import``), never for scores asked for by name.
    ``outputs`` (from :func:`extract_benchmark_outputs` of the same model) are reused instead
    of running the model again on those sets; the result's ``outputs`` holds every set used.
    ``cache`` and ``progress``: as in :func:`extract_benchmark_outputs`.
    """
    sets = dict(bench.ood if ood_sets is None else ood_sets)
    groups = {n: bench.ood_groups.get(n, "user") for n in sets}
    bench.check_user_names(extra_ood or {})  # a user set never stands in for a split or a built-in set
    for name, x in (extra_ood or {}).items():
        sets[name], groups[name] = x, "user"
    if not sets and not (ood_sets is None and bench.missing_ood):
        raise OODCoreError("no OOD set to evaluate; pass --ood NAME or --ood-file PATH")
    for name, x in sets.items():
        check_input_shape(x, bench.input_shape, name)
    names = score_names or scores_for_task(bench.task)
    used_params = {n: dict((score_params or {}).get(n) or {}) for n in names}
    scorers = {n: make_score(n, **used_params[n]) for n in names}
    for n, s in scorers.items():
        if s.refusal(bench.task):
            raise OODCoreError(s.refusal(bench.task))

    if device is not None:
        model.to(select_device(device))
    outputs = dict(outputs or {})
    user = {n: x for n, x in sets.items() if bench.ood.get(n) is not x}  # anything not the built-in tensor
    for n in user:  # outputs handed in under a replaced built-in name are the built-in set's: never reuse them
        if n in bench.ood:
            outputs.pop(n, None)
    needs_fit = any(s.requires_fit for s in scorers.values())
    extract_benchmark_outputs(model, bench, ["id", *(["train"] if needs_fit else []), *sets],
                              extra_ood=user, batch_size=batch_size, outputs=outputs, cache=cache, progress=progress,
                              replace_ood=True)  # extra_ood's names were checked above; ood_sets may replace on purpose
    skipped = {}
    if needs_fit:
        for n, s in list(scorers.items()):
            try:
                s.fit(outputs["train"], bench.train.y, model)
            except OODCoreError as e:
                if not skip_unfit:
                    raise
                skipped[n] = str(e)
                del scorers[n]
        names = [n for n in names if n in scorers]
        if not names:
            raise OODCoreError("no score could be fitted: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))

    inputs = bench.inputs(ood=sets, training=False)
    per_sample = {f"{set_name}/{n}": (s.score_inputs(model, inputs[set_name]) if s.requires_inputs
                                      else s(outputs[set_name]))
                  for set_name in inputs for n, s in scorers.items()}
    report: dict = {**id_metrics(bench.task, outputs["id"], bench.test.y), "ood": {}, "groups": groups}
    for set_name in sets:
        report["ood"][set_name] = {n: ood_metrics(per_sample[f"id/{n}"], per_sample[f"{set_name}/{n}"])
                                   for n in names}
    report["group_means"] = group_means(report["ood"], groups)
    # the protocol's sets whose files were not found: reported by name, not silently dropped
    report["missing_ood"] = {n: why for n, why in bench.missing_ood.items() if ood_sets is None}
    report["fpr95_definition"] = FPR95_DEFINITION
    report["score_convention"] = "higher score = more in-distribution"
    report["score_params"] = {n: used_params[n] for n in names}
    if skipped:
        report["skipped_scores"] = skipped
    return Evaluation(report, per_sample, outputs)


def group_means(per_set: dict, groups: dict[str, str]) -> dict:
    """Mean of each metric over the OOD sets of each group (near / far-real / far-synthetic /
    far / user): each group on its own, so real and synthetic far-OOD are never merged."""
    out: dict = {}
    order = {"near": 0, "far-real": 1, "far-synthetic": 2, "far": 3, "user": 4}
    for group in sorted(set(groups.values()), key=lambda g: (order.get(g, len(order)), g)):
        members = [s for s in per_set if groups[s] == group]
        out[group] = {}
        for score in per_set[members[0]]:
            out[group][score] = {m: float(np.mean([per_set[s][score][m] for s in members]))
                                 for m in per_set[members[0]][score]}
    return out


MISSING_NOTE = "not found on disk, so not scored: "


def format_table(report: dict, metrics=("auroc", "fpr95")) -> str:
    """A markdown table in percent: one row per OOD set and group mean, a column per (score, metric)."""
    if not report["ood"]:
        return "(no OOD set scored) " + MISSING_NOTE + (", ".join(report.get("missing_ood") or {}) or "-")
    score_names = list(next(iter(report["ood"].values())).keys())
    head = ["OOD set"] + [f"{s} {m}" for s in score_names for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(report["ood"].items()) + [(f"mean ({g})", v) for g, v in report["group_means"].items()]
    for name, per_score in rows:
        cells = [f"{100 * per_score[s][m]:.1f}" for s in score_names for m in metrics]
        lines.append("| " + " | ".join([name] + cells) + " |")
    params = {s: p for s, p in (report.get("score_params") or {}).items() if p and s in score_names}
    if params:  # a score not at its defaults says so under the table
        lines.append("")
        lines.append("score parameters: " + "; ".join(
            f"{s} " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())
            for s, p in params.items()))
    if report.get("skipped_scores"):
        lines.append("")
        lines.append("left out (cannot be fitted here): " + "; ".join(f"{n}: {why}" for n, why in
                                                                   report["skipped_scores"].items()))
    if report.get("missing_ood"):
        lines.append("")
        lines.append(MISSING_NOTE + ", ".join(report["missing_ood"]))
    return "\n".join(lines)
