"""Whole-model geometry: features extracted once and reused, the summary against direct
computations, the CLI commands `geometry` and `project`, and the app's cached wrappers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ood_core
from ood_core.cli import main
from ood_core.errors import DataError
from ood_core.evaluate import evaluate, extract_benchmark_outputs
from ood_core.geometry import geometry_summary, jacobian_norm

from conftest import CHECKPOINTS

DIGITS = str(CHECKPOINTS / "ce_digits.pt")


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the samples it is run on."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.head, self.seen = model, model.head, 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.inner(x)


@pytest.fixture(scope="module")
def digits_model():
    model, meta = ood_core.load_checkpoint(DIGITS)
    return model, ood_core.load_benchmark("digits")


def test_outputs_are_extracted_once_and_reused(digits_model):
    model, bench = digits_model
    counting = CountingModel(model).eval()  # a new Module starts in train mode, which would leak into model
    outputs = extract_benchmark_outputs(counting, bench)
    n_all = len(bench.test) + len(bench.train) + sum(x.shape[0] for x in bench.ood.values())
    assert counting.seen == n_all and set(outputs) == {"id", "train", *bench.ood}
    ev = evaluate(counting, bench, score_names=["msp", "mahalanobis", "knn"], outputs=outputs)
    geometry_summary(counting, bench, outputs=outputs, jacobian=None)
    assert counting.seen == n_all  # neither the evaluator nor the geometry ran the model again
    fresh = evaluate(model, bench, score_names=["msp", "mahalanobis", "knn"])
    for key, value in fresh.scores.items():
        np.testing.assert_array_equal(ev.scores[key], value)
    with pytest.raises(DataError, match="no set named 'nope'"):
        extract_benchmark_outputs(model, bench, ["nope"])


def test_evaluate_keeps_a_user_set_that_shares_a_builtin_name_apart(digits_model):
    model, bench = digits_model
    mine = torch.zeros(5, *bench.input_shape)
    ev = evaluate(model, bench, ood_sets={"blobs": mine}, score_names=["msp"])
    assert ev.scores["blobs/msp"].shape == (5,)


def test_summary_matches_direct_computations(digits_model):
    model, bench = digits_model
    assert not model.training
    s = geometry_summary(model, bench, probe_size=16, jacobian="exact")
    with torch.no_grad():
        z_train = model.backbone(bench.train.x).double().numpy()
        z_id = model.backbone(bench.test.x).double().numpy()
        z_far = model.backbone(bench.ood["uniform-noise"]).double().numpy()
    w = model.head.weight.detach().double().numpy()
    y = bench.train.y.numpy()
    # NC1 by its definition, with NumPy
    mu = np.stack([z_train[y == c].mean(0) for c in range(bench.num_classes)])
    mu_g = z_train.mean(0)
    dev = z_train - mu[y]
    sw = dev.T @ dev / len(z_train)
    sb = (mu - mu_g).T @ (mu - mu_g) / bench.num_classes
    assert s["nc"]["nc1"] == pytest.approx(np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10)) / bench.num_classes, rel=1e-4)
    # energy share outside span{w}: least-squares residual
    coef, *_ = np.linalg.lstsq(w.T, z_far.T, rcond=None)
    resid = z_far.T - w.T @ coef
    share = (resid ** 2).sum(0) / (z_far.T ** 2).sum(0)
    assert s["energy_outside_span_w"]["uniform-noise"] == pytest.approx(share.mean(), rel=1e-4)
    assert s["feature_norms"]["id"]["mean"] == pytest.approx(np.linalg.norm(z_id, axis=1).mean(), rel=1e-5)
    jn = jacobian_norm(model, bench.ood["blobs"][:16], method="exact").mean()
    assert s["jacobian_mean"]["blobs"] == pytest.approx(jn, rel=1e-6)
    assert s["jnd"]["blobs"] == pytest.approx(jn - s["jacobian_mean"]["id"], rel=1e-6)
    cos = np.asarray(s["cosine_means_vs_weights"])
    assert cos.shape == (6, 6) and np.all(np.argmax(cos, axis=1) == np.arange(6))  # each mean aligns with its own w
    json.dumps(s)  # JSON-able


def test_summary_of_a_multilabel_model_has_no_class_geometry():
    model, meta = ood_core.load_checkpoint(CHECKPOINTS / "jointenergy_canvases.pt")
    bench = ood_core.load_benchmark("digit-canvases")
    s = geometry_summary(model, bench, jacobian=None)
    assert "nc" not in s and "class_geometry" not in s
    assert set(s["energy_outside_span_w"]) == {"id", *bench.ood}


def test_cli_geometry_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["geometry", "--checkpoint", DIGITS, "--probe-size", "8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nc1" in text and "| uniform-noise |" in text and "JND" in text
    saved = json.loads(out.read_text())
    assert saved["method"] == "ce" and set(saved["nc"]) >= {"nc1", "nc4"}
    assert main(["geometry", "--checkpoint", str(tmp_path / "missing.pt")]) == 2


def test_cli_project_writes_maps_and_uses_the_cache(tmp_path, capsys):
    out, cache = tmp_path / "map.npz", tmp_path / "cache"
    args = ["project", "--checkpoint", DIGITS, "--out", str(out), "--cache-dir", str(cache)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "| uniform-noise |" in first and "from the cache" not in first
    with np.load(out) as f:
        maps = {k: f[k] for k in f.files}
    bench = ood_core.load_benchmark("digits")
    assert maps["id"].shape == (len(bench.test), 2) and set(maps) == {"id", *bench.ood}
    assert len(list(cache.glob("*.npz"))) == 1
    assert main(args) == 0
    assert "from the cache" in capsys.readouterr().out
    assert main(["project", "--checkpoint", DIGITS, "--out", str(tmp_path / "m.txt")]) == 2


def test_app_cached_wrappers_share_outputs(tmp_path, monkeypatch):
    import streamlit as st

    from ood_core import checkpoint_store
    from ood_core.app import cached

    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    st.cache_data.clear()
    st.cache_resource.clear()
    version = cached.checkpoint_version(DIGITS)
    assert version == (checkpoint_store.file_version(DIGITS), None)  # an embedded dataset: no data root in the key
    outputs = cached.outputs_cached(DIGITS, version)
    assert outputs is cached.outputs_cached(DIGITS, version)  # one shared extraction
    geo = cached.geometry_cached(DIGITS, version, None)
    assert geo["nc"]["nc4"] < 0.05
    proj = cached.projection_cached(DIGITS, version, "pca")
    assert set(proj.coords) == {"id", *ood_core.load_benchmark("digits").ood}
    assert len(list((tmp_path / "cache").glob("projection-pca-*.npz"))) == 1
    ev = cached.evaluation_cached(DIGITS, version)
    assert set(outputs) == {"id", "train", *ood_core.load_benchmark("digits").ood}  # not mutated by callers
    assert ev["report"]["id_accuracy"] > 0.95
    st.cache_data.clear()
    st.cache_resource.clear()


def test_cli_train_can_record_geometry(tmp_path):
    out = tmp_path / "t.pt"
    assert main(["train", "--dataset", "toy2d", "--epochs", "2", "--track-geometry", "1", "--out", str(out),
                 "--quiet"]) == 0
    _, meta = ood_core.load_checkpoint(out)
    assert [("nc1" in h, "jnd" in h) for h in meta["history"]] == [(True, True), (True, True)]
    assert meta["train_config"]["geometry_every"] == 1
