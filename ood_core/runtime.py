"""Device choice, seeding and version stamps (no global state is kept here)."""
from __future__ import annotations

import platform
import random

import numpy as np
import torch

from .errors import OODCoreError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


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
