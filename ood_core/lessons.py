"""Guided lessons: one per paper, plus one on why softmax and energy fail far from the data.

A lesson is pure data: a short sequence of :class:`Step` s, each a question to predict, a live
action that takes seconds on 2 CPU cores (train on toy2d, switch a score, move a threshold,
compare a method with its baseline), the figure that answers it and one paragraph of
explanation. The app's Lessons page draws them with the same ``ood_core`` calls as the other
pages (training jobs, evaluations, landscapes, the stored mechanism figures).

The answer to each question is **not** written here: :func:`judge` computes which choice the
data supports (AUROC, FPR at 95 % TPR, the mechanism's separation on both models), so a lesson
never tells a student something its own figure contradicts. Where a paper's claim does not
hold on this benchmark, the lesson says so (see the Claims page for the paired intervals).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .metrics import auroc, fpr_at_95_tpr

STEP_KINDS = ("train", "scores", "threshold", "mechanism")
# "About the same" when two AUROCs differ by less than this (a few percent of samples reordered)
SAME_AUROC = 0.02
SEPARATION = ("Further apart than on the baseline", "About the same", "Closer together than on the baseline")
FPR_BANDS = ("Under 10 %", "10 to 50 %", "Over 50 %")


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: ``kind`` (:data:`STEP_KINDS`) says which live action and figure the page draws.

    * ``train``: train ``Lesson.train`` live (pause, step an epoch, resume, reset), then judge
      the run's model like a ``threshold`` step's AUROC: does ``score`` separate ID from ``ood_set``?
    * ``scores``: switch between ``scores`` (empty: the checkpoint's own) on ``Lesson.method_file``;
      which one separates ID from ``ood_set`` best (highest AUROC)?
    * ``threshold``: move a threshold on ``score``; how much of ``ood_set`` passes as ID at the
      threshold keeping 95 % of ID (FPR95, in :data:`FPR_BANDS`)?
    * ``mechanism``: the stored mechanism figure, baseline beside method; are ID and OOD further
      apart on the method's model (:data:`SEPARATION`)?
    """

    kind: str
    title: str
    question: str
    explanation: str
    choices: tuple[str, ...] = ()  # empty for "scores": the score names are the choices
    score: str | None = None
    scores: tuple[str, ...] = ()
    ood_set: str | None = None

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {STEP_KINDS}, got {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class Lesson:
    key: str
    title: str
    paper: str
    intro: str
    method_file: str  # the shipped checkpoint the steps use
    steps: tuple[Step, ...]
    method: str | None = None  # the paper's method (None: the baseline lesson)
    baseline_file: str | None = None
    mechanism: str | None = None  # a key of ood_core.claims.MECHANISMS
    high_is_id: bool = True  # the mechanism quantity's direction
    train: dict | None = None  # start_training(method, dataset, epochs, landscape_score) of a "train" step


# --------------------------------------------------------------------------- judging
def band(fpr: float) -> int:
    """The :data:`FPR_BANDS` index of a false-positive rate in [0, 1]."""
    return 0 if fpr < 0.10 else 1 if fpr <= 0.50 else 2


def detects(auc: float) -> int:
    """Choice of a "does it call them OOD?" question from an AUROC: 0 detects (>= 0.75), 2 calls
    them ID at least as often as its data (<= 0.55), 1 in between."""
    return 0 if auc >= 0.75 else 2 if auc <= 0.55 else 1


def separation_auroc(values: dict[str, np.ndarray], high_is_id: bool) -> float:
    """AUROC of ID ("ID (test)") against every OOD group pooled, for a mechanism quantity, with
    ID as the positive class in the quantity's own direction."""
    id_values = np.asarray(values["ID (test)"], dtype=np.float64)
    ood = np.concatenate([np.asarray(v, dtype=np.float64) for k, v in values.items() if k != "ID (test)"])
    sign = 1.0 if high_is_id else -1.0
    return auroc(sign * id_values, sign * ood)


def compare_separation(baseline: float, method: float) -> int:
    """The :data:`SEPARATION` index of the method's separation AUROC against the baseline's."""
    if method - baseline > SAME_AUROC:
        return 0
    return 1 if abs(method - baseline) <= SAME_AUROC else 2


def step_aurocs(scores: dict[str, np.ndarray], names, ood_set: str) -> dict[str, float]:
    """AUROC of each score in ``names`` on ID vs ``ood_set``, from an evaluation's per-sample
    ``scores`` ({"id/NAME": ..., "SET/NAME": ...}); names without values are left out."""
    return {n: auroc(scores[f"id/{n}"], scores[f"{ood_set}/{n}"]) for n in names
            if f"id/{n}" in scores and f"{ood_set}/{n}" in scores}


def judge(step: Step, scores: dict[str, np.ndarray] | None = None, mechanism: dict | None = None,
          high_is_id: bool = True) -> tuple[int, str]:
    """(index of the choice the data supports, one line of the numbers behind it).

    ``scores``: per-sample scores of the step's checkpoint (an evaluation's ``scores``);
    ``mechanism``: the stored mechanism figure ({"baseline": {"values": ...}, "method": ...})."""
    if step.kind == "mechanism":
        base = separation_auroc(mechanism["baseline"]["values"], high_is_id)
        meth = separation_auroc(mechanism["method"]["values"], high_is_id)
        return compare_separation(base, meth), (f"separation (AUROC of ID against OOD on this quantity): "
                                                f"baseline {base:.3f}, method {meth:.3f}")
    if step.kind == "scores":
        aucs = step_aurocs(scores, step.scores or sorted({k.split("/", 1)[1] for k in scores}), step.ood_set)
        best = max(aucs, key=aucs.get)
        names = list(aucs)
        return names.index(best), "AUROC: " + ", ".join(f"{n} {a:.3f}" for n, a in aucs.items())
    ident, ood = scores[f"id/{step.score}"], scores[f"{step.ood_set}/{step.score}"]
    if step.kind == "train":
        auc = auroc(ident, ood)
        return detects(auc), f"AUROC of {step.score} on {step.ood_set}: {auc:.3f}"
    fpr = fpr_at_95_tpr(ident, ood)
    return band(fpr), f"{step.ood_set} accepted as ID at 95 % TPR ({step.score}): {fpr:.1%}"


def choices_of(step: Step, scores: dict[str, np.ndarray] | None = None) -> tuple[str, ...]:
    """The choices shown: the step's own, or for a ``scores`` step the scores it compares."""
    if step.kind == "scores":
        return tuple(step_aurocs(scores, step.scores or sorted({k.split("/", 1)[1] for k in scores}),
                                 step.ood_set))
    return step.choices


# --------------------------------------------------------------------------- the lessons
_THRESHOLD_TEXT = (
    "The slider starts at the threshold that keeps 95 % of the ID test samples: the operating point of "
    "FPR95, the share of OOD samples still accepted there. Move it: every OOD sample rejected by raising it "
    "costs the ID samples that score lower, and the ROC curve is this trade-off drawn for every threshold.")


def _paper_lesson(key, title, paper, intro, method, baseline_file, method_file, mechanism, high_is_id,
                  mech_question, mech_text, score, ood_set, scores_text) -> Lesson:
    return Lesson(
        key=key, title=title, paper=paper, intro=intro, method=method, baseline_file=baseline_file,
        method_file=method_file, mechanism=mechanism, high_is_id=high_is_id,
        steps=(
            Step("mechanism", "The mechanism, beside the baseline", mech_question, mech_text, choices=SEPARATION),
            Step("scores", "Switch the score", f"Which score of `{method_file}` separates its ID test samples "
                 f"from `{ood_set}` best?", scores_text, ood_set=ood_set),
            Step("threshold", "Move the threshold", f"At the threshold that keeps 95 % of ID, how much of "
                 f"`{ood_set}` does `{score}` accept as ID?", _THRESHOLD_TEXT, choices=FPR_BANDS, score=score,
                 ood_set=ood_set),
        ))


LESSONS: tuple[Lesson, ...] = (
    Lesson(
        key="baseline", title="Why softmax and energy fail far from the data", paper="the baseline (MSP, energy)",
        intro="A classifier learns where to put the boundaries *between* its classes, not where its data ends. "
              "Train one on four 2-D clusters and see what its confidence says far away from all of them.",
        method_file="ce_toy2d.pt", train={"method": "ce", "dataset": "toy2d", "epochs": 20, "landscape_score": "msp"},
        steps=(
            Step("train", "Train a classifier on four clusters",
                 "Far outside the clusters (the `ring` set around them), will the softmax confidence (MSP) "
                 "call the points OOD?",
                 "Logits are affine in the features, and the features of a ReLU network grow linearly along any "
                 "ray leaving the data. Far from the clusters one logit pulls ahead of the others and the softmax "
                 "saturates at 1, so the model is as confident there as on its own data, often more, and it is "
                 "least confident along the boundaries between classes, however close they are to the data. "
                 "Pause the run and step through the epochs: the boundaries sharpen and the confident regions "
                 "reach out to the edges of the plane.",
                 choices=("Yes: MSP is low far away, they are called OOD",
                          "Partly: about as often OOD as ID",
                          "No: MSP is as high far away as on the clusters"),
                 score="msp", ood_set="ring"),
            Step("scores", "Switch the score",
                 "Which of these scores separates the clusters from the far `ring` best?",
                 "MSP and energy are functions of the logits alone, and the logits keep growing away from the "
                 "data, so the energy (their log-sum-exp) grows too. Mahalanobis and KNN measure the distance to "
                 "the training features: they fall off in every direction that leads away from the data, which "
                 "is what a far-OOD detector needs. Near the boundaries, the logit scores are low for ID points "
                 "as well: that is where their false alarms come from.",
                 scores=("msp", "energy", "mahalanobis", "knn"), ood_set="ring"),
            Step("threshold", "Move the threshold",
                 "At the threshold that keeps 95 % of the ID test points, how many `uniform-box` points "
                 "(spread over the whole plane) does MSP accept as ID?", _THRESHOLD_TEXT,
                 choices=FPR_BANDS, score="msp", ood_set="uniform-box"),
        )),
    _paper_lesson(
        "movr", "Open-set recognition by the Jacobian norm (m-OvR)",
        "Park, Park, Jeong, Teoh, Pattern Recognition 2024 (arXiv 2209.11436)",
        "Learning to pull a class together (intra-class) lowers how fast the representation changes near its "
        "samples; learning to push classes apart (inter-class) raises it between them, where unknown inputs "
        "fall. The marginal one-vs-rest loss is built to do both.",
        "movr", "ce_digits.pt", "movr_digits.pt", "jacobian_hist", False,
        "m-OvR trains each class against the rest with a margin. Compared with plain CE, will it push the "
        "Jacobian norms of unknown digits further from those of the known digits?",
        "The Jacobian norm ||∂f/∂x|| measures how much the normalised representation moves when the input "
        "moves. The paper argues that each class learning against the rest keeps it small on known classes and "
        "large in the open space between them, so the Jacobian Norm Difference between known and unknown inputs "
        "grows. The numbers under the figure compare the two models on the shipped checkpoints; the Claims page "
        "tests the claim over 25 paired runs (5 splits x 5 seeds).",
        "ovr", "unknown",
        "m-OvR's own scores read its one-vs-rest heads (ovr, max_cosine); msp and energy read the same logits "
        "through a softmax. If the margin did its work, the one-vs-rest scores should rank unknown digits "
        "below known ones at least as well; the AUROCs under the figure say whether they do here."),
    _paper_lesson(
        "snojoe", "Multi-label OOD with spectral-normalised JointEnergy (SNoJoE)",
        "Mei, Wang, Zhang, Wang, arXiv 2405.04759; JointEnergy: Wang, Liu, Bocchieri, Li, NeurIPS 2021",
        "An image with several objects has several labels, so no single softmax fits. JointEnergy sums the "
        "evidence of every label; SNoJoE adds spectral normalisation so that the network cannot inflate that sum "
        "on inputs it has never seen.",
        "snojoe", "jointenergy_canvases.pt", "snojoe_canvases.pt", "joint_energy_hist", True,
        "Spectral normalisation bounds how much each layer can stretch its input. Compared with JointEnergy "
        "alone, will SNoJoE's canvases and OOD images be further apart in JointEnergy?",
        "JointEnergy is Σ_k softplus(f_k): every label's logit adds its evidence. A network free to grow its "
        "weights can give large logits to anything that shares a few edges with the training canvases; bounding "
        "each layer's spectral norm limits that, which should cut the OOD tail that overlaps the ID scores. "
        "The numbers under the figure are computed from it.",
        "joint_energy", "unknown",
        "joint_energy sums all labels' evidence; max_sigmoid and msp look at the single most confident label, "
        "which throws away the evidence of the others on an image with several objects."),
    _paper_lesson(
        "separation", "Separating OOD features from the collapsed ID features",
        "Wu, Yu, Cheng, He, Huang, arXiv 2405.17816",
        "At the end of training the features of each class collapse onto the classifier's direction for that "
        "class (neural collapse). The separation loss uses auxiliary outliers to push OOD features into the "
        "space orthogonal to all of those directions.",
        "separation", "oe_digits.pt", "separation_digits.pt", "orthogonal_share", False,
        "Both models saw the same auxiliary outliers (outlier exposure). Will the separation loss push OOD "
        "features further out of the classifier's span than outlier exposure alone?",
        "The figure shows the share of each feature vector's energy ||z||² outside the span of the classifier "
        "rows w_c. Collapsed ID features lie almost inside the span (share near 0). Outlier exposure only asks "
        "OOD inputs for a flat softmax; the separation loss asks their features to leave the span, which should "
        "move the OOD distribution to the right.",
        "separation", "unknown",
        "The separation score reads the same geometry as the figure (the part of a feature outside the class "
        "directions); msp, energy and maxlogit read only the logits, which see the span alone."),
    _paper_lesson(
        "ib", "Compact classes around learned centres (information bottleneck)",
        "Ando, arXiv 2111.12950",
        "Instead of boundaries, the information-bottleneck loss learns one centre per class and pulls the "
        "class's features into a compact cloud around it, while keeping the centres apart.",
        "ib", "ce_digits.pt", "ib_digits.pt", "center_distances", False,
        "Compared with a CE model, will the IB model put OOD inputs further from every class centre, relative "
        "to how far ID samples sit from theirs?",
        "The figure shows the squared distance to the nearest centre, over the median ID distance so the two "
        "models compare. Compression (small clouds) and separation (distant centres) both help: an input that "
        "belongs to no class has no centre to be close to.",
        "min_distance", "unknown",
        "min_distance is the distance to the nearest learned centre; mahalanobis measures it with the classes' "
        "shared covariance; msp and energy read the logits, which the IB model computes from those distances."),
    _paper_lesson(
        "l2norm", "The feature norm after L2-normalised training",
        "Haas, Yolland, Rabus, TMLR 2024 (arXiv 2306.04072)",
        "If the classifier only ever sees the direction of a feature vector, training leaves its length free. "
        "The paper finds that the length then grows with how familiar an input is.",
        "l2norm", "ce_digits.pt", "l2norm_digits.pt", "feature_norm_hist", True,
        "Compared with a CE model, will the feature norms of ID and OOD inputs be further apart after "
        "L2-normalised training?",
        "A CE model also uses the norm to make confident logits, so norms of ID and OOD overlap where it is "
        "confident about both. With z/||z|| in the head, the norm no longer changes a prediction; the paper's "
        "observation is that it still grows with training on ID data, which makes ||z|| alone an OOD score.",
        "feature_norm", "unknown",
        "feature_norm is ||z|| alone; msp and energy read the logits, which L2 normalisation has made "
        "independent of the norm."),
)
BY_KEY = {lesson.key: lesson for lesson in LESSONS}


def lesson_for_method(method: str) -> Lesson | None:
    """The lesson about ``method`` (its paper's), or None."""
    return next((lesson for lesson in LESSONS if lesson.method == method), None)
