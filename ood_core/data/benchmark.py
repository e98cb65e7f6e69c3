"""The benchmark container and the open-set protocol shared by every dataset.

A :class:`Benchmark` is an ID dataset (train/val/test :class:`Split`) with its named OOD
sets and their groups; :meth:`Benchmark.inputs` is the one mapping from set names
(``train``, ``val``, ``id`` = the ID test split, OOD set names) to inputs. The known-class
helpers implement the open-set protocol of the embedded datasets (known classes ID, the
others near-OOD) and the CLI's ``--known`` parsing.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import DataError

DEFAULT_KNOWN = (0, 1, 2, 3, 4, 5)
# The names :meth:`Benchmark.inputs` (and so every extractor, score fit, geometry function and
# the feature cache) gives the ID splits; a user's OOD set may never take one of them.
SPLIT_NAMES = {"train": "training", "val": "validation", "id": "ID test"}
# OOD groups of the embedded benchmarks (real-data presets use "near" / "far")
NEAR, FAR_REAL, FAR_SYNTHETIC = "near", "far-real", "far-synthetic"


@dataclasses.dataclass
class Split:
    """Inputs and targets of one split. ``y`` is (N,) int64 or (N, K) float32 multi-hot."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass
class Benchmark:
    """An ID dataset with its splits and its named OOD sets.

    ``ood`` maps a set name to an input tensor in the ID format; ``ood_groups`` gives each
    set's group: ``near``, ``far-real`` or ``far-synthetic`` on the embedded benchmarks,
    ``near`` or ``far`` on the real-data presets.
    """

    name: str
    task: str  # "multiclass" or "multilabel"
    input_shape: tuple[int, ...]
    known: tuple[int, ...]
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    ood: dict[str, torch.Tensor]
    ood_groups: dict[str, str]
    split_seed: int = 0
    ood_seed: int = 0
    # how the images were loaded when that is not implied by the name (imagefolder: resize/crop)
    preprocess: dict | None = None
    # OOD sets of the benchmark's protocol whose files were not found: {name: why}
    missing_ood: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def spec(self) -> dict:
        """What identifies this benchmark, as stored in checkpoint metadata."""
        return {"name": self.name, "known": list(self.known), "task": self.task,
                "input_shape": list(self.input_shape), "class_names": list(self.class_names),
                "split_seed": self.split_seed, "ood_seed": self.ood_seed,
                **({"preprocess": dict(self.preprocess)} if self.preprocess else {})}

    def check_user_names(self, names, replace_ood: bool = False) -> None:
        """Refuse user OOD set names that would stand in for a set of this benchmark: the ID
        splits' names (:data:`SPLIT_NAMES`: ``train``, ``val``, ``id``), which the scores are
        fitted on and compared with, and the benchmark's own OOD set names (present or missing),
        unless ``replace_ood`` (a library caller's ``evaluate(ood_sets=...)`` replacing a built-in
        set on purpose; its outputs are then extracted from the given tensor). DataError saying
        to rename the file."""
        for name in names:
            if name in SPLIT_NAMES:
                raise DataError(f"your OOD set is named {name!r}, the name of the benchmark's {SPLIT_NAMES[name]} "
                                f"split, which the scores use; rename the file (e.g. to my_{name}.npy)")
            if not replace_ood and (name in self.ood or name in self.missing_ood):
                raise DataError(f"your OOD set is named {name!r}, like the built-in OOD set of {self.name}; "
                                f"rename the file (e.g. to my_{name}.npy)")

    def inputs(self, extra: dict[str, torch.Tensor] | None = None, *, ood: dict[str, torch.Tensor] | None = None,
               training: bool = True, replace_ood: bool = False) -> dict[str, torch.Tensor]:
        """Set name -> inputs, the names every extractor, score and geometry function uses:
        ``"train"`` and ``"val"`` (left out when ``training`` is False), ``"id"`` (the ID test
        split), the OOD sets ``ood`` (default: all of :attr:`ood`), then ``extra`` (e.g. a user's
        sets), whose names are checked by :meth:`check_user_names`: a user set never replaces a
        split or a built-in set."""
        self.check_user_names(extra or {}, replace_ood=replace_ood)
        splits = {"train": self.train.x, "val": self.val.x} if training else {}
        return {**splits, "id": self.test.x, **(self.ood if ood is None else ood), **(extra or {})}


def check_known(known, n_classes: int = 10) -> tuple[int, ...]:
    """The sorted known classes of an open-set benchmark (default :data:`DEFAULT_KNOWN`): at
    least two, not all ``n_classes``, each in 0..n_classes-1. Order and repeats do not matter
    here (``[5, 1, 3, 1]`` is ``(1, 3, 5)``); the CLI's ``--known`` refuses repeats
    (:func:`parse_known`)."""
    known = DEFAULT_KNOWN if known is None else tuple(sorted({int(k) for k in known}))
    if len(known) < 2:
        raise DataError(f"need at least 2 known classes, got {list(known)}")
    if len(known) == n_classes:
        raise DataError("every class is known, so there is no unknown-class OOD set; leave at least one out")
    bad = [k for k in known if not 0 <= k < n_classes]
    if bad:
        raise DataError(f"known classes must be in 0..{n_classes - 1}, got {bad}")
    return known


def open_set_splits(n: int, n_classes: int = 10, n_known: int = 6) -> list[tuple[int, ...]]:
    """The known classes of ``n`` open-set splits (Neal et al. 2018: random known/unknown splits,
    results averaged over them): split 0 is :data:`DEFAULT_KNOWN` (the app's default), split
    i > 0 a random ``n_known``-of-``n_classes`` choice drawn from the seed (2018, i), skipping any
    split already listed. Deterministic: the first k splits are the same for every n >= k."""
    if n < 1:
        raise DataError(f"need at least one open-set split, got {n}")
    splits = [tuple(DEFAULT_KNOWN)][:n]
    i = 1
    while len(splits) < n:
        rng = np.random.default_rng([2018, i])
        split = tuple(sorted(int(c) for c in rng.choice(n_classes, n_known, replace=False)))
        if split not in splits:
            splits.append(split)
        i += 1
    return splits


def require_all_known(name: str, known, n_classes: int) -> None:
    """Refuse ``known`` unless it is None or every class: ``name`` has no open-set protocol."""
    if known is not None and tuple(sorted(int(k) for k in known)) != tuple(range(n_classes)):
        raise DataError(f"{name} has no open-set protocol: all {n_classes} classes are known; drop --known")


def parse_known(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"0,1,2"`` into a tuple of ints (CLI helper); None keeps the default. A class
    listed twice is refused (DataError)."""
    if text is None or text == "":
        return None
    try:
        known = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise DataError(f"--known takes comma-separated class indices like 0,1,2,3,4,5; got {text!r}") from None
    twice = sorted({k for k in known if known.count(k) > 1})
    if twice:  # a repeat is likely a typo (1,1,2 for 1,2,3?), so it is refused rather than merged
        raise DataError(f"--known lists class{'es' if len(twice) > 1 else ''} {', '.join(map(str, twice))} more than "
                        f"once ({text}); list each known class once")
    return known
