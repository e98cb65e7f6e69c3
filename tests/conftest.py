from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECKPOINTS = ROOT / "ood_core" / "shipped" / "checkpoints"  # also reachable through the link checkpoints/


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Feature and map caches of the whole run go to a temporary folder, never the user's
    ~/.cache/ood-lab (tests that need their own folder set $OOD_CACHE_DIR again)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OOD_CACHE_DIR", str(tmp_path_factory.mktemp("ood-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_digits_run():
    """A 3-epoch CE model on digits, trained once per test session."""
    import ood_core

    return ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=3, seed=0))


# ------------------------------------------------------------------ AppTest fixtures (test_app*.py)
@pytest.fixture
def clear_streamlit_caches():
    """Streamlit caches are process-wide: an app test starts cold and leaves nothing behind."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    """A folder with two small checkpoints, trained once per session: ``ce_digits.pt`` (3 epochs,
    per-epoch geometry record) and ``ce_toy2d.pt`` (2 epochs)."""
    import ood_core

    folder = tmp_path_factory.mktemp("checkpoints")
    r = ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=3, geometry_every=1))
    ood_core.save_checkpoint(folder / "ce_digits.pt", r.model, r.meta)
    r = ood_core.train("ce", "toy2d", ood_core.TrainConfig(epochs=2))
    ood_core.save_checkpoint(folder / "ce_toy2d.pt", r.model, r.meta)
    return folder


@pytest.fixture
def app(ckpt_dir, monkeypatch, clear_streamlit_caches):
    """An AppTest of app.py listing the checkpoints of ``ckpt_dir`` (not yet run)."""
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, TIMEOUT
    from ood_core import checkpoint_store

    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(ckpt_dir))
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


@pytest.fixture
def own_dir(ckpt_dir, tmp_path, monkeypatch):
    """A fresh checkpoint folder holding a copy of ``ce_toy2d.pt``, listed by the app, and a
    fresh cache folder."""
    import shutil

    from ood_core import checkpoint_store

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(ckpt_dir / "ce_toy2d.pt", folder / "ce_toy2d.pt")
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(folder))
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    return folder
