"""Device choice, seeding and version stamps (no global state is kept here)."""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from .errors import OODCoreError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
APP_THREADS_ENV = "OOD_APP_THREADS"


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Resolve ``"auto"`` to cuda > mps > cpu; check that an explicit choice exists here."""
    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    kind = pref.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise OODCoreError(f"unknown device {preference!r}; pass one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise OODCoreError("device 'cuda' was asked for but no CUDA GPU is visible; pass --device cpu or auto")
    if kind == "mps" and not mps_ok:
        raise OODCoreError("device 'mps' was asked for but Apple MPS is not available; pass --device cpu or auto")
    return torch.device(pref)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def library_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint, so a result can be traced to its stack."""
    import sklearn
    import torchvision

    from . import __version__

    return {"ood_core": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def app_torch_threads(environ: dict | None = None) -> int:
    """Torch intra-op threads for the app's page computations: ``$OOD_APP_THREADS`` if set,
    else the usable cores minus one (at least 1).

    Why not every core: beside the page's script run there is a live training job (one
    thread, :func:`ood_core.jobs.start_training`) and, when the app is used on the machine
    that serves it, the browser drawing the page. Torch's OpenMP threads spin while they wait
    for each other, so a thread count equal to the cores makes every computation wait whenever
    another busy thread takes a core (on 2 cores, a page opened cold rendered about 0.5 s later
    with 2 threads than with 1: ``docs/performance.md``).
    Raises OODCoreError for a value that is not a positive integer.
    """
    value = (os.environ if environ is None else environ).get(APP_THREADS_ENV, "").strip()
    default = max(1, usable_cpus() - 1)
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:  # "1.5", "two"
        n = 0
    if n < 1:
        raise OODCoreError(f"${APP_THREADS_ENV} must be a positive integer (torch threads for the app's pages), "
                           f"got {value!r}; unset it for the default, the usable cores minus one ({default} here)")
    return n
