import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHECKPOINTS = ROOT / "checkpoints"


@pytest.fixture(scope="session")
def tiny_digits_run():
    """A 3-epoch CE model on digits, trained once per test session."""
    import ood_core

    return ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=3, seed=0))
