"""The app on a real-data preset (fake CIFAR-10 files in the real format): choosing the data
root in the sidebar, reading features the CLI cached, and never serving results of another data
root or another model."""
from __future__ import annotations

import importlib
import json
import pickle
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, TIMEOUT, models_tab, on_page
from fake_datasets import write_all
from ood_core.app import state
from ood_core import checkpoint_store
from ood_core.cli import main
from ood_core.paths import DATA_ROOT_ENV, DOWNLOAD_ENV

E = importlib.import_module("ood_core.evaluate")
pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory, fake_root):
    """A folder holding one checkpoint trained by the CLI on the fake cifar10 preset."""
    folder = tmp_path_factory.mktemp("real-ckpts")
    with pytest.MonkeyPatch.context() as mp:  # the CLI exports --data-root; undo it after
        mp.setenv(DATA_ROOT_ENV, "unset")
        assert main(["train", "--dataset", "cifar10", "--data-root", str(fake_root), "--epochs", "1",
                     "--arch", "smallcnn", "--out", str(folder / "ce_cifar10.pt"), "--quiet"]) == 0
    return folder


@pytest.fixture
def app(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(cifar_dir))
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _cli_report(ckpt, root, tmp_path, name) -> dict:
    out = tmp_path / f"{name}.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ROOT_ENV, "unset")
        assert main(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(root), "--no-cache",
                     "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _auroc(at, ood_set: str, score: str) -> float:
    df = at.dataframe[0].value
    return float(df[(df["ood_set"] == ood_set) & (df["score"] == score)]["auroc"].iloc[0])


def test_data_root_chosen_in_the_sidebar(app, fake_root, cifar_dir, tmp_path):
    at = on_page(app)
    assert not at.exception, [e.value for e in at.exception]
    assert any("trained on `cifar10`" in w.value for w in at.warning)  # the sidebar says what is missing
    assert any("need a data root" in e.value and "Data root" in e.value for e in at.error)

    at.text_input(key=state.DATA_ROOT_KEY).input(str(fake_root)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    status = " ".join(m.value for m in at.sidebar.markdown)
    assert "`cifar10`: ready (cifar100 ✓, tinyimagenet ✗, mnist ✓" in status
    report = _cli_report(cifar_dir / "ce_cifar10.pt", fake_root, tmp_path, "r")
    assert _auroc(at, "svhn", "msp") == pytest.approx(report["ood"]["svhn"]["msp"]["auroc"], abs=1e-9)
    assert at.metric[0].value == f"{report['id_accuracy']:.1%}"

    at.text_input(key=state.DATA_ROOT_KEY).input(str(tmp_path / "nowhere")).run()  # not served stale
    assert not at.exception
    assert any("not a folder" in m.value for m in at.sidebar.markdown)
    assert any("cifar10 not found under" in e.value for e in at.error)


def test_app_reads_features_the_cli_cached(app, fake_root, cifar_dir, tmp_path, monkeypatch):
    ckpt = cifar_dir / "ce_cifar10.pt"
    report = _cli_report(ckpt, fake_root, tmp_path, "r")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ROOT_ENV, "unset")
        assert main(["features", "--checkpoint", str(ckpt), "--data-root", str(fake_root),
                     "--cache-dir", str(tmp_path / "cache")]) == 0

    def no_model_runs(*_a, **_k):
        raise AssertionError("the app ran the model although the CLI had cached every set")

    monkeypatch.setattr(E, "extract_outputs", no_model_runs)
    monkeypatch.setenv(DATA_ROOT_ENV, str(fake_root))  # the sidebar's default
    at = app.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    for page in ("ood_core/app/app_pages/roc.py", "ood_core/app/app_pages/features.py", "ood_core/app/app_pages/energy.py", "ood_core/app/app_pages/embeddings.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
    at.switch_page("ood_core/app/app_pages/models.py").run()
    for s in ("cifar100", "mnist", "svhn", "dtd", "places365"):
        assert _auroc(at, s, "energy") == pytest.approx(report["ood"][s]["energy"]["auroc"], abs=1e-9)


def test_another_data_root_with_other_images_gives_other_results(app, fake_root, cifar_dir, tmp_path):
    """Same preset name, other files: the cache keys hold the data's content, so the second root's
    numbers are computed afresh (and equal the CLI's on that root), not served from the first."""
    other = tmp_path / "other"
    shutil.copytree(fake_root, other)
    batch = other / "cifar-10-batches-py" / "test_batch"
    with open(batch, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d["data"] = 255 - d["data"]  # other ID test images
    with open(batch, "wb") as f:
        pickle.dump(d, f)

    at = on_page(app)
    at.text_input(key=state.DATA_ROOT_KEY).input(str(fake_root)).run()
    first = _auroc(at, "svhn", "msp")
    at.text_input(key=state.DATA_ROOT_KEY).input(str(other)).run()
    assert not at.exception and not at.error
    second = _auroc(at, "svhn", "msp")
    expected = _cli_report(cifar_dir / "ce_cifar10.pt", other, tmp_path, "other")["ood"]["svhn"]["msp"]["auroc"]
    assert second == pytest.approx(expected, abs=1e-9) and second != pytest.approx(first, abs=1e-6)


def test_models_page_trains_on_a_preset_from_the_data_root(app, fake_root):
    at = models_tab(on_page(app))
    at.selectbox(key="train_dataset").set_value("cifar10").run()
    assert any("Data root" in e.value for e in at.error)  # no root yet: said, not crashed
    at.text_input(key=state.DATA_ROOT_KEY).input(str(fake_root)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(o.startswith("ce:") for o in at.selectbox(key="train_method").options)
