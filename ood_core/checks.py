"""Checks of numbers given by the user or read from a file (options, configs, checkpoint metadata).

Each returns the value as a plain ``int`` / ``float``, or raises ``error`` (an
:class:`~ood_core.errors.OODCoreError` subclass, so the CLI prints one line and exits 2) saying
what was expected. NaN, infinities, booleans, text and numbers out of range are all refused
here, before they reach torch, numpy or sklearn (whose own errors would be reported as
internal errors, or pass silently: ``nan < 0`` is False).
"""
from __future__ import annotations

import math
import numbers

from .errors import OODCoreError

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's random_state range (torch accepts more)
MAX_WIDTH = 1 << 16  # features, hidden units, image side: larger is a typo (or a tampered file)
MAX_CLASSES = 100_000
MAX_IMAGE_SIDE = 4096  # pixels of a resized or cropped image (an imported model's input)
MAX_EPOCHS = 100_000  # more is a typo: 10**20 epochs would never end and never save
MAX_PROJECTIONS = 4096  # random projections of a Jacobian-norm estimate


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in {minimum}..{maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def whole(value, what: str, minimum: int | None = None, maximum: int | None = None,
          error: type[Exception] = OODCoreError) -> int:
    """``value`` as an int: a whole number (not a bool, not 2.5, not "3") in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{what} must be a whole number{_range(minimum, maximum)}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise error(f"{what} must be a whole number{_range(minimum, maximum)}, got {value}")
    return value


def finite(value, what: str, minimum: float | None = None, maximum: float | None = None, *,
           positive: bool = False, error: type[Exception] = OODCoreError) -> float:
    """``value`` as a float: a finite number (not NaN/Inf, not a bool or text) in
    [minimum, maximum], and > 0 when ``positive``."""
    want = "a positive number" if positive else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise error(f"{what} must be {want}{_range(minimum, maximum)}, got {value!r}")
    value = float(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum) \
            or (positive and value <= 0):
        raise error(f"{what} must be {want}{_range(minimum, maximum)}, got {value:g}")
    return value


def seed(value, what: str = "seed", error: type[Exception] = OODCoreError) -> int:
    """A random seed: a whole number in 0..:data:`MAX_SEED`."""
    return whole(value, what, 0, MAX_SEED, error=error)
