"""Bring your own model: `import` of a torchvision model with weights from a file, of your own
``pkg.module:factory`` model and (when timm is installed) of a timm model, on image folders the
tests write; then `evaluate --outputs` and every app page read the checkpoint like a trained one.

The imported model's features and logits are checked against an independent path: torchvision's
own feature extractor (``create_feature_extractor``) on the same weights and normalised inputs.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ood_core import load_checkpoint
from ood_core.adapters import ALLOW_CODE_ENV, ImportedModel, preprocess_from_weights
from ood_core.cli import main
from ood_core.data import load_benchmark_from_spec
from ood_core.errors import CheckpointError, OODCoreError
from ood_core.importing import import_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "fox")
SIZE = ["--resize", "36", "--crop", "32"]  # small inputs: the test runs in seconds


def write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png`` (or ``root/<class>/`` for split ""), random RGB of odd sizes."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            d = root / split / name if split else root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = rng.integers(0, 255, (40 + 3 * i, 50, 3), dtype=np.uint8)
                base[..., c] = 255 - i  # a class-dependent channel: a little signal
                Image.fromarray(base).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images"), {"train": 10, "test": 4})


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=len(CLASSES)).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def imported(folder, resnet_weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "r18_import.pt"
    assert main(["import", "--model", "tv:resnet18", "--weights", str(resnet_weights), "--dataset",
                 f"imagefolder:{folder}", *SIZE, "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_imported_resnet_matches_torchvision_on_the_same_weights(imported, resnet_weights, folder):
    model, meta = load_checkpoint(imported)
    assert isinstance(model, ImportedModel) and meta["method"] == "import"
    assert meta["model"]["preprocess"] == {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406],
                                           "std": [0.229, 0.224, 0.225]}  # the weights' mean/std, our sizes
    bench = load_benchmark_from_spec(meta["dataset"])
    assert bench.input_shape == (3, 32, 32) and bench.class_names == list(CLASSES)
    assert len(bench.test) == 4 * len(CLASSES) and len(bench.train) + len(bench.val) == 10 * len(CLASSES)

    from torchvision.models.feature_extraction import create_feature_extractor

    reference = torchvision.models.resnet18(num_classes=len(CLASSES))
    reference.load_state_dict(torch.load(resnet_weights, weights_only=True))
    reference.eval()
    extractor = create_feature_extractor(reference, {"flatten": "features", "fc": "logits"})
    x = bench.test.x
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = extractor((x - mean) / std)
        got = model(x)
    assert got.features.shape == (len(x), 512)
    torch.testing.assert_close(got.features, want["features"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits, want["logits"], rtol=1e-5, atol=1e-5)
    # the head is the network's own fc, not a copy; its weight classifies the features
    assert model.head is model.net.fc
    torch.testing.assert_close(got.features @ model.head.weight.T + model.head.bias, got.logits, rtol=1e-4, atol=1e-4)
    # stored under the network's own keys: the state dict that came in is the one in the file
    from ood_core.checkpoint import read_checkpoint

    assert set(read_checkpoint(imported)["state_dict"]) == set(reference.state_dict())


def test_image_folder_loading_resizes_then_crops_the_centre(tmp_path):
    from ood_core.data.real import load_image_folder

    d = tmp_path / "one" / "a"
    d.mkdir(parents=True)
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 6:34] = 200  # the centre 28 columns are bright, the sides dark
    Image.fromarray(img).save(d / "x.png")
    x, y, classes = load_image_folder(tmp_path / "one", (10, 10), resize=10)  # 20x40 -> 10x20 -> centre 10x10
    assert x.shape == (1, 3, 10, 10) and classes == ["a"]
    assert int(x.min()) >= 190  # all of the crop comes from the bright centre
    x, _, _ = load_image_folder(tmp_path / "one", (10, 10))  # plain resize: the dark sides stay
    assert int(x.min()) < 50


def test_evaluate_writes_every_sets_features_and_logits(imported, tmp_path, capsys):
    out, report = tmp_path / "outputs.npz", tmp_path / "report.json"
    assert main(["evaluate", "--checkpoint", str(imported), "--outputs", str(out), "--json", str(report),
                 "--no-cache", "--device", "cpu"]) == 0
    arrays = np.load(out)
    rep = json.loads(report.read_text())
    sets = ["id", *rep["ood"]]
    assert sorted(arrays.files) == sorted(f"{s}/{part}" for s in sets for part in ("features", "logits"))
    model, meta = load_checkpoint(imported)
    bench = load_benchmark_from_spec(meta["dataset"])
    with torch.no_grad():
        want = model(bench.test.x)
    np.testing.assert_allclose(arrays["id/features"], want.features.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays["id/logits"], want.logits.numpy(), rtol=1e-5, atol=1e-5)
    # any score recomputed outside the lab from the file: energy = logsumexp of the logits
    from scipy.special import logsumexp
    from sklearn.metrics import roc_auc_score

    s_id, s_ood = logsumexp(arrays["id/logits"], axis=1), logsumexp(arrays["constant/logits"], axis=1)
    auroc = roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])
    assert rep["ood"]["constant"]["energy"]["auroc"] == pytest.approx(auroc, abs=1e-9)


def test_weights_that_do_not_fit_are_refused_by_name(folder, tmp_path):
    wrong = tmp_path / "r18_5.pth"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), wrong)
    with pytest.raises(OODCoreError, match="does not fit tv:resnet18 with 3 classes.*fc.weight"):
        import_model("tv:resnet18", f"imagefolder:{folder}", str(wrong), preprocess={"resize": 36, "crop": 32},
                     evaluate_after=False)
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), other)
    with pytest.raises(OODCoreError, match="unexpected keys layer1.2"):
        import_model("tv:resnet18", f"imagefolder:{folder}", str(other), preprocess={"resize": 36, "crop": 32},
                     evaluate_after=False)


def test_weights_files_never_run_code(folder, tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(3, 512), "hook": ImportedModel}, evil)  # a pickled class: refused
    with pytest.raises(OODCoreError, match="not a weights-only loadable state dict"):
        import_model("tv:resnet18", f"imagefolder:{folder}", str(evil), evaluate_after=False)
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    with pytest.raises(OODCoreError, match="expected a .pth/.pt state dict or a .safetensors file"):
        import_model("tv:resnet18", f"imagefolder:{folder}", str(text), evaluate_after=False)


def test_unknown_names_say_what_to_pass(folder):
    with pytest.raises(OODCoreError, match="torchvision has no classification model 'resnet19'.*resnet18"):
        import_model("tv:resnet19", f"imagefolder:{folder}", evaluate_after=False)
    with pytest.raises(OODCoreError, match="pass tv:NAME"):
        import_model("resnet18", f"imagefolder:{folder}", evaluate_after=False)
    with pytest.raises(OODCoreError, match="IMAGENET1K_V1"):
        import_model("tv:resnet18", f"imagefolder:{folder}", "IMAGENET9K", evaluate_after=False)


def test_torchvision_weights_enum_is_not_downloaded_unless_asked(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty cache
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(OODCoreError, match="not in torch's cache.*pass --download"):
            import_model("tv:resnet18", f"imagefolder:{folder}", "IMAGENET1K_V1", evaluate_after=False)
    finally:
        torch.hub.set_dir(str(Path(torch.hub.get_dir())))
    # the enum's preprocessing is metadata: known offline
    assert preprocess_from_weights("tv:vit_b_16", "IMAGENET1K_V1") == {
        "resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


USER_MODEL = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.body(x))


def make():
    torch.manual_seed(1)
    return Tiny()
'''


@pytest.fixture(scope="module")
def user_code(tmp_path_factory) -> Path:
    pkg = tmp_path_factory.mktemp("usercode")
    (pkg / "lab_user_model.py").write_text(textwrap.dedent(USER_MODEL))
    return pkg


def _cli(args, pythonpath, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ood_core", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)


def test_your_own_factory_model_from_the_command_line_only(user_code, folder, tmp_path):
    out = tmp_path / "tiny.pt"
    res = _cli(["import", "--model", "lab_user_model:make", "--dataset", f"imagefolder:{folder}", *SIZE, "--out",
                str(out), "--quiet", "--device", "cpu"], user_code)
    assert res.returncode == 0, res.stderr
    # loading it imports the user's module: refused unless allowed
    with pytest.raises(CheckpointError, match=f"{ALLOW_CODE_ENV}=lab_user_model"):
        load_checkpoint(out)
    res = _cli(["evaluate", "--checkpoint", str(out), "--no-cache", "--device", "cpu"], user_code)
    assert res.returncode == 2 and "--allow-code" in res.stderr and ALLOW_CODE_ENV in res.stderr, res.stderr
    res = _cli(["evaluate", "--checkpoint", str(out), "--no-cache", "--device", "cpu", "--allow-code",
                "--outputs", str(tmp_path / "o.npz")], user_code)
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "o.npz")["id/features"].shape[1] == 16  # the input of its final Linear


def test_named_feature_layer(folder, resnet_weights):
    model, meta = import_model("tv:resnet18", f"imagefolder:{folder}", str(resnet_weights),
                               feature_layer="layer4", preprocess={"resize": 36, "crop": 32}, evaluate_after=False)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.features.shape == (2, 512 * 1 * 1) and meta["imported"]["feature_layer"] == "layer4"
    with pytest.raises(OODCoreError, match="no such layer"):
        import_model("tv:resnet18", f"imagefolder:{folder}", feature_layer="layer9", evaluate_after=False)


@pytest.mark.usefixtures("clear_streamlit_caches")
def test_timm_model_import_evaluate_and_every_page(folder, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    weights = tmp_path / "timm_r18.pth"
    torch.save(net.state_dict(), weights)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    out = ckpts / "timm_r18.pt"
    assert main(["import", "--model", "timm:resnet18", "--weights", str(weights), "--dataset", f"imagefolder:{folder}",
                 *SIZE, "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    model, meta = load_checkpoint(out)
    assert model.head is model.net.fc and meta["imported"]["feature_dim"] == 512
    x = torch.rand(2, 3, 32, 32)
    mean, std = model.mean, model.std
    with torch.no_grad():
        got = model(x)
        want_logits = net((x - mean) / std)
        want_features = net.forward_head(net.forward_features((x - mean) / std), pre_logits=True)  # timm's own API
    torch.testing.assert_close(got.logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.features, want_features, rtol=1e-5, atol=1e-5)
    assert main(["evaluate", "--checkpoint", str(out), "--outputs", str(tmp_path / "o.npz"), "--no-cache",
                 "--device", "cpu"]) == 0
    assert np.load(tmp_path / "o.npz")["id/features"].shape == (4 * len(CLASSES), 512)
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    _render_every_page(ckpts, monkeypatch)


# --------------------------------------------------------------------------- app pages
PAGES = ["models", "lessons", "jacobian", "collapse", "features", "energy", "roc", "embeddings", "compare"]


def _render_every_page(folder_of_ckpts: Path, monkeypatch, env=None):
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP
    from ood_core import checkpoint_store

    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(folder_of_ckpts))
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    for page in PAGES:
        at.switch_page(f"ood_core/app/app_pages/{page}.py").run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])


@pytest.mark.usefixtures("clear_streamlit_caches")
def test_every_app_page_reads_an_imported_torchvision_checkpoint(imported, tmp_path, monkeypatch):
    import shutil

    shutil.copy(imported, tmp_path / imported.name)
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    _render_every_page(tmp_path, monkeypatch)


@pytest.mark.usefixtures("clear_streamlit_caches")
def test_the_app_loads_your_code_only_when_allowed(user_code, folder, tmp_path, monkeypatch):
    out = tmp_path / "ckpts" / "tiny.pt"
    out.parent.mkdir()
    res = _cli(["import", "--model", "lab_user_model:make", "--dataset", f"imagefolder:{folder}", *SIZE, "--out",
                str(out), "--quiet", "--device", "cpu"], user_code)
    assert res.returncode == 0, res.stderr
    monkeypatch.syspath_prepend(str(user_code))
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, on_page
    from ood_core import checkpoint_store

    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(out.parent))
    monkeypatch.delenv(ALLOW_CODE_ENV, raising=False)
    at = on_page(AppTest.from_file(APP, default_timeout=300))
    assert any(ALLOW_CODE_ENV in e.value for e in at.error), [e.value for e in at.error]  # refused, with the way out
    _render_every_page(out.parent, monkeypatch, env={ALLOW_CODE_ENV: "lab_user_model"})


@pytest.mark.usefixtures("clear_streamlit_caches")
def test_models_page_imports_a_torchvision_model_and_refuses_code(folder, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, IMPORT_TAB, models_tab, on_page
    from ood_core import checkpoint_store

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(ckpts))
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    at = models_tab(on_page(AppTest.from_file(APP, default_timeout=300)), IMPORT_TAB)
    at.text_input(key="import_arch").set_value("lab_user_model:make").run()
    assert any("command line" in i.value for i in at.info) and at.button(key="import_start").disabled
    at.text_input(key="import_arch").set_value("tv:resnet18")
    at.text_input(key="import_dataset").set_value(f"imagefolder:{folder}")
    at.number_input(key="import_resize").set_value(36)
    at.number_input(key="import_crop").set_value(32)
    at.text_input(key="import_out_name").set_value("r18.pt").run()
    at.button(key="import_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Saved `r18.pt`" in s.value for s in at.success)
    model, meta = load_checkpoint(ckpts / "r18.pt")
    assert meta["imported"]["weights"].startswith("random") and meta["model"]["preprocess"]["crop"] == 32


def test_safetensors_weights(folder, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=3)
    path = tmp_path / "r18.safetensors"
    st.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model, meta = import_model("tv:resnet18", f"imagefolder:{folder}", str(path),
                               preprocess={"resize": 36, "crop": 32}, evaluate_after=False)
    assert meta["imported"]["weights"] == "file r18.safetensors"
    torch.testing.assert_close(model.net.fc.weight, net.fc.weight)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(OODCoreError, match="not a readable safetensors file"):
        import_model("tv:resnet18", f"imagefolder:{folder}", str(broken), evaluate_after=False)


@pytest.mark.parametrize("kind", ["fifo.pth", "zero.safetensors", "folder.pt", "missing.pth", "too-big.pth"])
def test_weights_paths_that_are_not_plain_files_are_refused_at_once(kind, folder, tmp_path, monkeypatch,
                                                                     resnet_weights):
    """A FIFO would block the reader for ever and a link to /dev/zero never ends; a weights file
    over the checkpoint size limit is refused before it is read."""
    path = tmp_path / kind
    word = {"fifo.pth": "not a regular file (a FIFO", "zero.safetensors": "not a regular file (a symbolic link to a "
            "character device", "folder.pt": "not a regular file (a folder", "missing.pth": "no such file",
            "too-big.pth": "too large"}
    if kind.startswith("fifo"):
        os.mkfifo(path)
    elif kind.startswith("zero"):
        os.symlink("/dev/zero", path)
    elif kind.startswith("folder"):
        path.mkdir()
    elif kind.startswith("too-big"):
        path.write_bytes(resnet_weights.read_bytes())
        monkeypatch.setenv("OOD_MAX_CHECKPOINT_BYTES", "1000")
    with pytest.raises(OODCoreError, match="^" + re.escape(f"--weights {path}: {word[kind]}")):
        import_model("tv:resnet18", f"imagefolder:{folder}", str(path), preprocess={"resize": 36, "crop": 32},
                     evaluate_after=False)
