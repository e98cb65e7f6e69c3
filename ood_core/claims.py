"""The five papers' claims: the verdicts measured by ``benchmarks/compare.py`` and the mechanism
each one rests on, drawn from the shipped checkpoints for the method beside its baseline.

* :func:`load_results` reads the results file that ``compare.py`` writes (``results/compare.json``):
  for each claim its statement, parts, paired effects with 95 % intervals and verdict.
* :data:`MECHANISMS` names, per claim, the per-sample quantity that shows *why* the method works
  (Jacobian norms for m-OvR, feature norms for L2 normalisation, orthogonal-energy shares for the
  separation loss, JointEnergy for SNoJoE, distances to the nearest centre for the IB loss).
  :func:`compute_mechanisms` evaluates them on a folder of checkpoints and
  :func:`write_mechanisms` stores them (``results/mechanisms.json``), so a page reads numbers
  and computes nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint_store import file_version  # the checkpoints' content hash, memoised
from .errors import OODCoreError

from .paths import SHIPPED_RESULTS as RESULTS_DIR

COMPARE_RESULTS = RESULTS_DIR / "compare.json"
MECHANISMS_FILE = RESULTS_DIR / "mechanisms.json"
MAX_PER_SET = 300  # samples per drawn distribution (seeded subsample)
COMPARE_COMMAND = "python benchmarks/compare.py"


# --------------------------------------------------------------------------- verdicts
def load_results(path: str | Path | None = None) -> dict:
    """The results file of ``compare.py``: ``{"meta": ..., "claims": [...], "runs": [...]}``.
    OODCoreError with the command to run when it is missing or not such a file. ``path``
    defaults to :data:`COMPARE_RESULTS`."""
    path = Path(path or COMPARE_RESULTS)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise OODCoreError(f"no benchmark results at {path}; run `{COMPARE_COMMAND}` to make them") from None
    except (OSError, ValueError) as e:
        raise OODCoreError(f"cannot read the benchmark results {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list) or not isinstance(doc.get("meta"), dict):
        raise OODCoreError(f"{path} is not a results file of compare.py (no 'meta'/'claims'); "
                           f"run `{COMPARE_COMMAND}` again")
    return doc


def format_effect(part: dict) -> str:
    """``+1.2 [+0.4, +2.0]``: the paired effect and its interval, in points (x100) or raw units."""
    k, d = (100.0, 1) if part["unit"] == "points" else (1.0, 3)
    return f"{k * part['effect']:+.{d}f} [{k * part['low']:+.{d}f}, {k * part['high']:+.{d}f}]"


def format_value(part: dict, key: str) -> str:
    k, d = (100.0, 1) if part["unit"] == "points" else (1.0, 3)
    return f"{k * part[key]:.{d}f}"


def claim_rows(claim: dict) -> list[dict]:
    """One row per part of a judged claim, ready for a table."""
    return [{"part": f"({i}) {p['text']}" + (" [condition]" if p.get("condition") else ""),
             "baseline": f"{p['baseline']}: {format_value(p, 'mean_b')}",
             "method": f"{p['method']}: {format_value(p, 'mean_a')}",
             "claimed": ("lower" if p["direction"] == "less" else "higher")
             + (f" (margin {100 * p['margin']:+.0f} points)" if p.get("margin") else ""),
             "effect [95 % CI]": format_effect(p), "pairs": p["n_pairs"],
             "holds": {True: "yes", False: "no", None: "no verdict"}[p["holds"]]}
            for i, p in enumerate(claim["parts"], 1)]


# --------------------------------------------------------------------------- mechanisms
@dataclasses.dataclass(frozen=True)
class Mechanism:
    """What to draw for a claim: ``values(model, bench, outputs)`` -> {set label: per-sample array}
    for the baseline's and the method's checkpoints."""

    key: str
    claim: str
    method: str
    baseline: str
    dataset: str
    x_label: str
    what: str  # one sentence: what to look for
    values: Callable
    title: str = ""  # the method's short name on the Home page's card
    headline: str = ""  # one sentence: how the method works, for the Home page's card
    page: str = ""  # the url path of the app page that shows this mechanism live


def _subsample(a, n: int = MAX_PER_SET, seed: int = 0) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size <= n:
        return a
    return a[np.sort(np.random.default_rng(seed).choice(a.size, n, replace=False))]


def _by_group(bench, per_set: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """{"ID (test)": ..., "OOD: <group>": the group's sets pooled, ...}, each subsampled."""
    out = {"ID (test)": _subsample(per_set("id"))}
    groups: dict[str, list[str]] = {}
    for name, group in bench.ood_groups.items():
        groups.setdefault(group, []).append(name)
    for group, names in groups.items():
        out[f"OOD: {group}"] = _subsample(np.concatenate([per_set(n) for n in names]))
    return out


def _jacobian_values(model, bench, outputs):
    from .geometry import jacobian_norms

    return jacobian_norms(model, {"ID (test)": bench.test.x, "OOD: unknown classes": bench.ood["unknown"]},
                          MAX_PER_SET, method="exact")


def _feature_norm_values(model, bench, outputs):
    return _by_group(bench, lambda s: outputs[s].features.norm(dim=1).numpy())


def _orthogonal_values(model, bench, outputs):
    from .geometry import orthogonal_energy_share
    from .models import head_weight

    w = head_weight(model).detach().cpu()
    return _by_group(bench, lambda s: orthogonal_energy_share(outputs[s].features, w))


def _joint_energy_values(model, bench, outputs):
    return _by_group(bench, lambda s: torch.nn.functional.softplus(outputs[s].logits).sum(dim=1).numpy())


def _center_distance_values(model, bench, outputs):
    """Squared distance to the nearest class centre (learned centres of a centres head, else the
    training class means: the ``min_distance`` score, negated), over the median ID distance so two
    models' scales compare."""
    from .scores import make_score

    score = make_score("min_distance")
    score.fit(outputs["train"], bench.train.y, model)
    dist = {s: -np.asarray(score(outputs[s]), dtype=np.float64) for s in ["id", *bench.ood]}
    scale = float(np.median(dist["id"])) or 1.0
    return _by_group(bench, lambda s: dist[s] / scale)


MECHANISMS: dict[str, Mechanism] = {m.key: m for m in [
    Mechanism("jacobian_hist", "movr", "movr", "ce", "digits", "‖∂f/∂x‖_F (f = z/‖z‖)",
              "Known classes should sit at low Jacobian norm and unknown ones at high; m-OvR should pull "
              "the two further apart than CE.", _jacobian_values,
              title="m-OvR and the Jacobian norm",
              headline="Learning each class against the rest flattens the representation on known classes and "
                       "steepens it between them, so unknown inputs land where the Jacobian norm is high.",
              page="jacobian"),
    Mechanism("joint_energy_hist", "snojoe", "snojoe", "jointenergy", "digit-canvases",
              "JointEnergy Σ softplus(f_i) (high = ID)",
              "ID canvases should score high and OOD low; spectral norm should shrink the OOD tail that "
              "overlaps the ID scores.", _joint_energy_values,
              title="SNoJoE: spectral-normalised JointEnergy",
              headline="For multi-label images the energies of all labels are summed; spectral normalisation "
                       "keeps the network from inflating them on inputs it has never seen.",
              page="energy"),
    Mechanism("orthogonal_share", "separation", "separation", "oe", "digits", "share of ‖z‖² outside span{w_c}",
              "ID features should lie in the span of the classifier rows (share near 0) and OOD features "
              "outside it; the separation loss should push OOD further out than OE.", _orthogonal_values,
              title="Separation loss and neural collapse",
              headline="Class features collapse onto the classifier's directions; the loss pushes auxiliary "
                       "outliers into the space orthogonal to them, where unknown inputs are then found.",
              page="collapse"),
    Mechanism("center_distances", "ib", "ib", "ce", "digits", "min_k ‖z − c_k‖² / median over ID",
              "ID samples should lie close to a centre and OOD far; the IB loss should make the ID "
              "clusters tighter so the two separate better.", _center_distance_values,
              title="Information-bottleneck loss",
              headline="Each class is a compact cloud around a learned centre; the distance to the nearest "
                       "centre then says how familiar an input is.",
              page="embeddings"),
    Mechanism("feature_norm_hist", "l2norm", "l2norm", "ce", "digits", "‖z‖ (high = ID)",
              "With L2-normalised training the feature norm is free to encode familiarity: ID norms "
              "should sit well right of OOD norms, much more than on a CE model.", _feature_norm_values,
              title="L2-normalised training",
              headline="When the classifier only sees the direction of the features, their length is free to "
                       "grow with familiarity: the feature norm alone detects OOD inputs.",
              page="features"),
]}


def shipped_checkpoint(folder: str | Path, method: str, dataset: str) -> Path:
    """The checkpoint ``{method}_{short}.pt`` of the shipped folder (``make checkpoints`` names)."""
    short = {"digits": "digits", "digit-canvases": "canvases"}.get(dataset, dataset)
    path = Path(folder) / f"{method}_{short}.pt"
    if not path.is_file():
        raise OODCoreError(f"no checkpoint {path.name} in {folder}; `make checkpoints` trains the shipped ones")
    return path


def compute_mechanisms(folder: str | Path, keys: list[str] | None = None) -> dict:
    """Per-sample values of every mechanism on the shipped checkpoints of ``folder``:
    ``{"checkpoints": {file: digest}, "figures": {key: {"baseline"|"method": {"file", "values"}}}}``."""
    from .checkpoint import checkpoint_benchmark, load_checkpoint
    from .evaluate import extract_benchmark_outputs

    doc: dict = {"checkpoints": {}, "figures": {}}
    for key in keys or list(MECHANISMS):
        mech = MECHANISMS[key]
        fig = {}
        for role, method in (("baseline", mech.baseline), ("method", mech.method)):
            path = shipped_checkpoint(folder, method, mech.dataset)
            model, meta = load_checkpoint(path)
            bench = checkpoint_benchmark(meta, name=path.name)
            outputs = extract_benchmark_outputs(model, bench)
            values = mech.values(model, bench, outputs)
            fig[role] = {"file": path.name, "method": method,
                         "values": {k: [round(float(v), 5) for v in np.asarray(a).ravel()] for k, a in values.items()}}
            doc["checkpoints"][path.name] = file_version(path)
        doc["figures"][key] = fig
    return doc


def write_mechanisms(folder: str | Path, out: str | Path | None = None) -> Path:
    """Compute every mechanism on ``folder`` and write it atomically to ``out`` (default
    :data:`MECHANISMS_FILE`)."""
    out = Path(out or MECHANISMS_FILE)
    doc = compute_mechanisms(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, out)
    return out


def load_mechanisms(folder: str | Path, path: str | Path | None = None) -> dict | None:
    """The stored mechanisms when they were computed on the checkpoints now in ``folder``
    (same content digests), else None (the caller computes them afresh)."""
    try:
        doc = json.loads(Path(path or MECHANISMS_FILE).read_text())
    except (OSError, ValueError):
        return None
    stored = doc.get("checkpoints") if isinstance(doc, dict) else None
    if not isinstance(stored, dict) or not isinstance(doc.get("figures"), dict):
        return None
    for name, digest in stored.items():
        p = Path(folder) / name
        if not p.is_file() or file_version(p) != digest:
            return None
    return doc
