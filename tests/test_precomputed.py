"""The shipped first views (``ood_core.precomputed``): every stored number is what the code
computes now, an entry is served only for its exact inputs, and the Jacobian page's first view
on a shipped checkpoint reads the store instead of computing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, TIMEOUT, as_shown, on_page, shown_tables
from ood_core import checkpoint_store, geometry, precomputed
from ood_core.checkpoint import checkpoint_benchmark, load_checkpoint
from ood_core.checkpoint_store import file_version, list_checkpoints
from ood_core.feature_cache import data_fingerprint
from ood_core.paths import SHIPPED_CHECKPOINTS
from ood_core.views import set_inputs

VIEW = precomputed.JACOBIAN_VIEW


def _shipped_entry(name: str = "ce_digits.pt"):
    path = SHIPPED_CHECKPOINTS / name
    model, meta = load_checkpoint(path, device="cpu")
    return path, model, checkpoint_benchmark(meta, name=name)


def test_every_shipped_checkpoint_has_its_first_view_and_every_number_is_computed_now():
    """Recomputed with ``geometry.jacobian_norm`` itself on the same samples: a change to the
    estimator, the OOD sets or a checkpoint that moves a number fails here (``make checkpoints``
    rewrites the file)."""
    doc = precomputed.load_precomputed()
    assert doc, f"{precomputed.PRECOMPUTED_FILE} is missing or unreadable: make checkpoints"
    assert doc["jacobian_view"] == {"method": VIEW.method, "n_proj": VIEW.n_proj, "probe_size": VIEW.probe_size,
                                    "n_sets": VIEW.n_sets, "seed": VIEW.seed}
    shipped = {file_version(p): p.name for p in list_checkpoints(SHIPPED_CHECKPOINTS)}
    assert {d: e["file"] for d, e in doc["checkpoints"].items()} == shipped
    for digest, entry in doc["checkpoints"].items():
        _, model, bench = _shipped_entry(entry["file"])
        assert list(entry["jacobian_norms"]) == ["id", *list(bench.ood)[:VIEW.n_sets]]
        for name, stored in entry["jacobian_norms"].items():
            x = set_inputs(bench, name)[:VIEW.probe_size]
            fresh = geometry.jacobian_norm(model, x, method="estimate", n_proj=VIEW.n_proj, seed=VIEW.seed)
            assert stored["fingerprint"] == data_fingerprint(x)
            # the thread count may change float32 sums in the last bits, never more
            np.testing.assert_allclose(stored["values"], fresh, rtol=1e-5, err_msg=f"{entry['file']} {name}")


def test_a_stored_view_is_served_only_for_its_exact_inputs():
    path, _, bench = _shipped_entry()
    digest, x = file_version(path), bench.test.x
    got = precomputed.stored_jacobian_norms(digest, "id", x, "estimate", VIEW.n_proj, VIEW.probe_size)
    assert got is not None and got.dtype == np.float64 and got.shape == (min(VIEW.probe_size, len(x)),)
    entry = precomputed.load_precomputed()["checkpoints"][digest]["jacobian_norms"]["id"]
    assert got.tolist() == entry["values"]
    changed = x.clone()
    changed[0, 0, 0, 0] += 0.5
    refused = {
        "another checkpoint": ("0" * 32, "id", x, "estimate", VIEW.n_proj, VIEW.probe_size),
        "other samples": (digest, "id", changed, "estimate", VIEW.n_proj, VIEW.probe_size),
        "another set's name": (digest, "ring", x, "estimate", VIEW.n_proj, VIEW.probe_size),
        "other K": (digest, "id", x, "estimate", 8, VIEW.probe_size),
        "other sample count": (digest, "id", x, "estimate", VIEW.n_proj, 64),
        "exact": (digest, "id", x, "exact", VIEW.n_proj, VIEW.probe_size),
    }
    for why, args in refused.items():
        assert precomputed.stored_jacobian_norms(*args) is None, why
    assert precomputed.stored_jacobian_norms(digest, "id", x, "estimate", VIEW.n_proj, VIEW.probe_size,
                                             seed=1) is None


def test_a_missing_or_foreign_file_serves_nothing(tmp_path):
    path, _, bench = _shipped_entry()
    args = (file_version(path), "id", bench.test.x, "estimate", VIEW.n_proj, VIEW.probe_size)
    assert precomputed.stored_jacobian_norms(*args, path=tmp_path / "missing.json") is None
    for text in ("not json", json.dumps({"format": 999, "checkpoints": {}}), json.dumps([1, 2])):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        assert precomputed.stored_jacobian_norms(*args, path=bad) is None


def test_write_precomputed_stores_what_compute_gives(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(SHIPPED_CHECKPOINTS / "ce_toy2d.pt", folder)
    out = precomputed.write_precomputed(folder, tmp_path / "out.json")
    doc = json.loads(out.read_text())
    (entry,) = doc["checkpoints"].values()
    assert entry["file"] == "ce_toy2d.pt" and list(entry["jacobian_norms"]) == ["id", "ring", "uniform-box"]
    _, model, bench = _shipped_entry("ce_toy2d.pt")
    fresh = geometry.jacobian_norm(model, bench.ood["ring"][:VIEW.probe_size], n_proj=VIEW.n_proj,
                                   method="estimate")
    np.testing.assert_allclose(entry["jacobian_norms"]["ring"]["values"], fresh, rtol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))


def test_jacobian_page_first_view_on_a_shipped_checkpoint_reads_the_store(tmp_path, monkeypatch,
                                                                           clear_streamlit_caches):
    """A copy of a shipped checkpoint (same content, other folder) opens on the stored norms: the
    page computes none for its default view, and its JND table is the stored numbers'. Other
    settings are computed."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(SHIPPED_CHECKPOINTS / "ce_digits.pt", folder)
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(folder))
    calls = []
    real = geometry.jacobian_norm

    def counting(model, x, method="exact", n_proj=16, **kw):
        calls.append((method, n_proj, len(x)))
        return real(model, x, method=method, n_proj=n_proj, **kw)

    monkeypatch.setattr(geometry, "jacobian_norm", counting)
    at = on_page(AppTest.from_file(APP, default_timeout=TIMEOUT), "jacobian")
    assert not at.exception, [e.value for e in at.exception]
    assert calls and all(n == 33 for _, _, n in calls)  # only the path plot's 33 points are computed
    entry = precomputed.load_precomputed()["checkpoints"][file_version(folder / "ce_digits.pt")]["jacobian_norms"]
    jnd = shown_tables(at)[0].set_index("set")
    ref = np.mean(entry["id"]["values"])
    assert list(jnd.index) == ["ID (test)", *list(entry)[1:]]
    for name in list(entry)[1:]:
        assert jnd.loc[name, "mean ||J||_F"] == as_shown(np.mean(entry[name]["values"]))
        assert jnd.loc[name, "JND vs ID"] == as_shown(np.mean(entry[name]["values"]) - ref)
    at.select_slider(key="jac_k").set_value(8).run()
    assert not at.exception
    assert sum(1 for c in calls if c == ("estimate", 8, VIEW.probe_size)) == 1 + VIEW.n_sets


def test_stored_view_needs_a_tensor_set():
    """A set that is not a tensor in memory (a real dataset read lazily) is never fingerprinted."""
    path, _, _ = _shipped_entry()
    assert precomputed.stored_jacobian_norms(file_version(path), "id", [torch.zeros(1, 8, 8)], "estimate",
                                             VIEW.n_proj, VIEW.probe_size) is None
