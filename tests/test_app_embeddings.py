"""Headless tests of the Embeddings page (AppTest) against independent computations: the
benchmark's sizes, a NumPy PCA of the model's features, the registry's scores and
``integrated_gradients`` called directly; plus the numba cache set-up that the page's UMAP
relies on (in subprocesses, so this process's environment is left alone)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import ood_core
from apptest_helpers import as_shown, shown_tables, vega_charts
from ood_core.attribution import integrated_gradients
from ood_core.data import load_benchmark_from_spec
from ood_core.scores import make_score

ROOT = Path(__file__).resolve().parents[1]
PAGE = "ood_core/app/app_pages/embeddings.py"

pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """The page caches maps on disk under $OOD_CACHE_DIR: keep the user's cache out of it."""
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "ood-cache"))


def _model_bench(ckpt: Path):
    model, meta = ood_core.load_checkpoint(ckpt)
    return model, meta, load_benchmark_from_spec(meta["dataset"])


def _open(app: AppTest, checkpoint: Path | None = None) -> AppTest:
    at = app.run()
    if checkpoint is not None:
        at.selectbox(key="checkpoint").set_value(str(checkpoint)).run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _scatter(at: AppTest):
    """The map: the one Vega-Lite chart drawing (x, y) points of samples (set, index)."""
    maps = [v for v in vega_charts(at) if {"x", "y", "set", "index", "group", "score"} <= set(v.table.columns)]
    assert len(maps) == 1
    return maps[0]


def _x_title(view) -> str:
    return view.spec["layer"][0]["encoding"]["x"]["title"]


def _points(table) -> list[tuple[str, int]]:
    return [(s, int(i)) for s, i in zip(table["set"], table["index"])]


def _groups(view) -> dict:
    """The map's rows per legend group (an ID class or "OOD: <set>"), in the table's order."""
    return {g: rows for g, rows in view.table.groupby("group", sort=False)}


def _attribution(at: AppTest):
    """The attribution chart's table, or None when the page draws none."""
    views = [v for v in vega_charts(at) if {"input", "attribution"} <= set(v.table.columns)]
    assert len(views) <= 1
    return views[0].table if views else None


def _grid(table, column: str) -> np.ndarray:
    """An image column of the attribution table (one row per pixel) as a (rows, cols) array."""
    rows, cols = table["row"].to_numpy(), table["col"].to_numpy()
    grid = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    grid[rows, cols] = table[column].to_numpy()
    assert np.isfinite(grid).all()  # every pixel once
    return grid


# ------------------------------------------------------------------------------- the map
def test_default_run_is_pca_with_every_id_and_ood_point(app, ckpt_dir):
    at = _open(app)
    assert at.radio(key="emb_method").value == "pca"
    _, meta, bench = _model_bench(ckpt_dir / "ce_digits.pt")
    view = _scatter(at)
    assert _x_title(view).startswith("PC1")
    groups = _groups(view)
    id_groups = {g: rows for g, rows in groups.items() if g.startswith("ID: ")}
    assert {f"OOD: {s}" for s in bench.ood} == {g for g in groups if g.startswith("OOD: ")}
    # every ID test point once, in the group of its own class
    id_points = [p for rows in id_groups.values() for p in _points(rows)]
    assert sorted(id_points) == [("id", i) for i in range(len(bench.test.y))]
    labels = bench.test.y.numpy()
    for g, rows in id_groups.items():
        cls = meta["dataset"]["class_names"].index(g[len("ID: "):])
        assert all(labels[i] == cls for _, i in _points(rows))
    # every sample of every OOD set once
    for s, x in bench.ood.items():
        assert _points(groups[f"OOD: {s}"]) == [(s, i) for i in range(len(x))]
    # a click selects a sample: each layer's point selection is on the fields (set, index)
    picks = [p for layer in view.spec["layer"] for p in layer.get("params", [])]
    assert picks and all(p["select"]["type"] == "point" and p["select"]["fields"] == ["set", "index"] for p in picks)


@pytest.mark.parametrize("normalize", [False, True])
def test_pca_coordinates_equal_an_independent_numpy_pca(app, ckpt_dir, normalize):
    at = _open(app)
    if normalize:
        at.checkbox(key="emb_normalize").check().run()
    model, _, bench = _model_bench(ckpt_dir / "ce_digits.pt")
    outs = ood_core.extract_benchmark_outputs(model, bench, ["id", *bench.ood])
    names = ["id", *bench.ood]
    feats = np.concatenate([outs[n].features.double().numpy() for n in names])  # fit_on = union (default)
    if normalize:
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    centred = feats - feats.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    offsets = np.cumsum([0] + [len(outs[n].features) for n in names])
    row = {n: offsets[k] for k, n in enumerate(names)}

    got = np.full_like(expected, np.nan)
    table = _scatter(at).table
    idx = [row[s] + i for s, i in _points(table)]
    got[idx, 0], got[idx, 1] = table["x"], table["y"]
    assert np.isfinite(got).all()
    for c in range(2):  # a principal direction is defined up to its sign
        sign = np.sign(np.dot(got[:, c], expected[:, c]))
        np.testing.assert_allclose(sign * got[:, c], expected[:, c], atol=1e-3 * np.abs(expected).max())


def test_changing_the_score_recolours_the_ood_points(app, ckpt_dir):
    at = _open(app)
    model, _, bench = _model_bench(ckpt_dir / "ce_digits.pt")
    before = {g: rows["score"].to_numpy() for g, rows in _groups(_scatter(at)).items()}
    assert at.selectbox(key="emb_score").value != "feature_norm"
    at.selectbox(key="emb_score").set_value("feature_norm").run()
    assert not at.exception
    view = _scatter(at)
    groups = _groups(view)
    for s, x in bench.ood.items():
        expected = make_score("feature_norm")(ood_core.extract_outputs(model, x))  # ||z||, the registry's
        colours = groups[f"OOD: {s}"].sort_values("index")["score"].to_numpy()
        np.testing.assert_allclose(colours, expected, rtol=1e-5)
        assert not np.allclose(colours, before[f"OOD: {s}"])
    ood_layer = view.spec["layer"][1]
    assert ood_layer["encoding"]["color"]["field"] == "score"
    assert "feature_norm" in ood_layer["encoding"]["color"]["title"]


def test_ood_set_choice_limits_the_traces(app, ckpt_dir):
    at = _open(app)
    at.multiselect(key="emb_sets").set_value(["uniform-noise"]).run()
    names = list(_groups(_scatter(at)))
    assert [n for n in names if n.startswith("OOD")] == ["OOD: uniform-noise"]
    assert sum(n.startswith("ID: ") for n in names) == 6


# ------------------------------------------------------------------------------- the selected sample
def test_picked_sample_shows_its_scores_and_its_attribution(app, ckpt_dir):
    at = _open(app)
    model, _, bench = _model_bench(ckpt_dir / "ce_digits.pt")
    at.selectbox(key="emb_score").set_value("energy").run()
    at.selectbox(key="emb_pick_set").set_value("uniform-noise").run()
    at.number_input(key="emb_pick_index_uniform-noise").set_value(3).run()
    assert not at.exception, [e.value for e in at.exception]

    x = bench.ood["uniform-noise"]
    energy = make_score("energy")(ood_core.extract_outputs(model, x))
    id_energy = make_score("energy")(ood_core.extract_outputs(model, bench.test.x))
    table = shown_tables(at)[0].set_index("score")
    assert table.loc["energy", "value"] == as_shown(energy[3])
    assert table.loc["energy", "ID percentile"] == as_shown(100 * np.mean(id_energy <= energy[3]))
    assert {"msp", "maxlogit", "energy", "feature_norm"} <= set(table.index)

    shown = _attribution(at)
    direct = integrated_gradients(model, x[3], "energy", baseline="zeros", n_steps=128)
    np.testing.assert_allclose(_grid(shown, "attribution"), direct.attributions.numpy()[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_grid(shown, "input"), x[3].numpy()[0], atol=1e-6)

    # another baseline and path length give another, still matching, map
    at.radio(key="emb_baseline").set_value("mean").run()
    at.select_slider(key="emb_steps").set_value(32).run()
    direct = integrated_gradients(model, x[3], "energy", baseline="mean", reference=bench.train.x, n_steps=32)
    np.testing.assert_allclose(_grid(_attribution(at), "attribution"), direct.attributions.numpy()[0],
                               rtol=1e-4, atol=1e-6)
    assert any(f"{float(direct.scores[0] - direct.baseline_scores[0]):.4f}" in c.value for c in at.caption)


def test_map_selection_fills_the_picker_and_then_lets_go(app):
    at = _open(app)
    # what st.vega_lite_chart(on_select="rerun") reports after a click on an OOD point (the
    # browser test clicks one for real)
    at.session_state["emb_map"] = {"selection": {"pick_id": [{"set": "uniform-noise", "index": 7}],
                                                 "pick_ood": [{"set": "uniform-noise", "index": 7}]}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="emb_pick_set").value == "uniform-noise"
    assert at.number_input(key="emb_pick_index_uniform-noise").value == 7
    # the same (still active) selection does not override a later manual choice
    at.number_input(key="emb_pick_index_uniform-noise").set_value(2).run()
    assert at.number_input(key="emb_pick_index_uniform-noise").value == 2


def test_non_attributable_score_says_why(app, ckpt_dir):
    """mahalanobis is one of the CE model's scores; its compute detaches the features."""
    at = _open(app)
    if "mahalanobis" not in at.selectbox(key="emb_score").options:
        pytest.skip("the CE recipe does not report mahalanobis")
    at.selectbox(key="emb_score").set_value("mahalanobis").run()
    assert not at.exception
    assert any("mahalanobis" in i.value and "not differentiable" in i.value for i in at.info)
    assert _attribution(at) is None


def test_toy2d_checkpoint_shows_points_and_bar_attributions(app, ckpt_dir):
    at = _open(app, ckpt_dir / "ce_toy2d.pt")
    model, _, bench = _model_bench(ckpt_dir / "ce_toy2d.pt")
    groups = _groups(_scatter(at))
    assert sum(len(rows) for g, rows in groups.items() if g.startswith("ID: ")) == len(bench.test.y)
    for s, x in bench.ood.items():
        assert len(groups[f"OOD: {s}"]) == len(x)
    score = at.selectbox(key="emb_score").value
    shown = _attribution(at)
    assert list(shown["coordinate"]) == ["x1", "x2"]  # bars, one per coordinate
    direct = integrated_gradients(model, bench.test.x[0], score, n_steps=128)
    np.testing.assert_allclose(shown["attribution"], direct.attributions.numpy(), rtol=1e-4, atol=1e-6)
    x0 = bench.test.x[0].tolist()
    assert at.metric[0].value == f"({x0[0]:.3f}, {x0[1]:.3f})"


def test_switching_checkpoint_drops_picks_the_new_one_lacks(app, ckpt_dir):
    _, _, digits = _model_bench(ckpt_dir / "ce_digits.pt")
    at = _open(app, ckpt_dir / "ce_toy2d.pt")
    at.selectbox(key="emb_pick_set").set_value("id").run()
    at.number_input(key="emb_pick_index_id").set_value(399).run()  # toy2d has 400 ID test points
    assert len(digits.test.y) <= 399
    at.selectbox(key="checkpoint").set_value(str(ckpt_dir / "ce_digits.pt")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="emb_pick_index_id").value < len(digits.test.y)
    at.selectbox(key="checkpoint").set_value(str(ckpt_dir / "ce_toy2d.pt")).run()
    at.selectbox(key="emb_pick_set").set_value("ring").run()
    at.selectbox(key="checkpoint").set_value(str(ckpt_dir / "ce_digits.pt")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="emb_pick_set").value == "id"  # "ring" is not a digits OOD set


def test_multilabel_checkpoint_groups_id_points_by_label_count(monkeypatch):
    from conftest import CHECKPOINTS
    from apptest_helpers import APP, TIMEOUT
    from ood_core import checkpoint_store

    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(CHECKPOINTS))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at = _open(at, CHECKPOINTS / "jointenergy_canvases.pt")
    _, _, bench = _model_bench(CHECKPOINTS / "jointenergy_canvases.pt")
    counts = (bench.test.y.numpy() > 0.5).sum(axis=1)
    id_groups = {g: rows for g, rows in _groups(_scatter(at)).items() if g.startswith("ID: ")}
    for g, rows in id_groups.items():
        n = int(g.split()[1])
        assert all(counts[i] == n for _, i in _points(rows))
    assert sum(len(rows) for rows in id_groups.values()) == len(counts)
    assert _grid(_attribution(at), "attribution").shape == (16, 16)


# ------------------------------------------------------------------------------- UMAP (slow: numba)
def test_umap_on_request_maps_every_point(app, ckpt_dir, tmp_path, monkeypatch):
    # numba's cache goes to a private folder here; restored after the test
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    at = _open(app)
    _, _, bench = _model_bench(ckpt_dir / "ce_digits.pt")
    at.radio(key="emb_method").set_value("umap").run()
    # the fit runs in a worker thread: the page says so and returns at once
    assert not at.exception and any("in the background" in i.value for i in at.info)
    _wait_for_map(at)
    view = _scatter(at)
    assert _x_title(view) == "UMAP 1"
    points = _points(view.table)
    assert len(points) == len(set(points)) == len(bench.test.y) + sum(len(x) for x in bench.ood.values())
    xy = view.table[["x", "y"]].to_numpy()
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0
    # fitted on ID only, UMAP's transform caveat is shown
    at.radio(key="emb_fit_on").set_value("id").run()
    _wait_for_map(at)
    assert any("UMAP.transform" in w.value for w in at.warning)


def _wait_for_map(at, timeout_s: float = 600) -> None:
    """Rerun the page (as the fragment's poll would) until the background UMAP map is drawn."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert not at.exception, [e.value for e in at.exception]
        if not any("in the background" in i.value for i in at.info):
            return
        time.sleep(1.0)
        at.run()
    raise AssertionError(f"no UMAP map after {timeout_s} s")


# ------------------------------------------------------------------------------- numba's cache folder
def _run_python(code: str, env: dict) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", ""), str(ROOT)]).strip(os.pathsep)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_numba_cache_dir_defaults_to_the_ood_cache_folder(tmp_path):
    out = _run_python("""
        import json, os
        import numba  # imported first on purpose: its config must be refreshed
        from ood_core.projection import configure_numba_cache
        used = configure_numba_cache()
        print(json.dumps([used, os.environ["NUMBA_CACHE_DIR"], numba.config.CACHE_DIR]))
    """, {"OOD_CACHE_DIR": str(tmp_path / "c")})
    expected = str(tmp_path / "c" / "numba")
    assert json.loads(out) == [expected, expected, expected]
    assert (tmp_path / "c" / "numba").is_dir()


def test_numba_cache_dir_set_by_the_user_is_left_alone(tmp_path):
    mine = str(tmp_path / "my-numba")
    out = _run_python("""
        import json, os
        from ood_core.projection import configure_numba_cache
        print(json.dumps([configure_numba_cache(), os.environ["NUMBA_CACHE_DIR"]]))
    """, {"OOD_CACHE_DIR": str(tmp_path / "c"), "NUMBA_CACHE_DIR": mine})
    assert json.loads(out) == [mine, mine]
    assert not (tmp_path / "c" / "numba").exists()


def test_umap_fit_sets_the_cache_dir_before_importing_umap(tmp_path):
    """A stand-in ``umap`` module records NUMBA_CACHE_DIR at import time: numba reads it when
    umap defines its cached functions, so it must already be set then."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "umap.py").write_text(textwrap.dedent("""
        import os
        import numpy as np
        SEEN_AT_IMPORT = os.environ.get("NUMBA_CACHE_DIR")

        class UMAP:
            def __init__(self, **params):
                pass

            def fit_transform(self, x):
                return np.asarray(x)[:, :2]
    """))
    out = _run_python("""
        import numpy as np
        from ood_core.projection import project
        project({"id": np.random.default_rng(0).normal(size=(40, 5))}, method="umap", n_neighbors=5)
        import umap
        print(umap.SEEN_AT_IMPORT)
    """, {"OOD_CACHE_DIR": str(tmp_path / "c"), "PYTHONPATH": str(fake)})
    assert out == str(tmp_path / "c" / "numba")


def test_one_input_of_your_own_gets_every_score_its_percentiles_and_an_attribution(app, ckpt_dir, tmp_path,
                                                                                  monkeypatch):
    """Upload one image on the Embeddings page: it is shown in the model's input format, every
    score of the model is listed with its percentile among the ID test scores (checked against a
    direct count on the evaluation computed here), and its Integrated Gradients map is drawn."""
    from PIL import Image

    from apptest_helpers import on_page
    from ood_core import load_checkpoint
    from ood_core.app import state
    from ood_core.data import load_user_ood
    from ood_core.uploads import save_upload
    from ood_core.views import evaluate_model

    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    image = tmp_path / "my_digit.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(image)

    class File:
        name = "my_digit.png"

        def getvalue(self):
            return image.read_bytes()

    at = on_page(app, "embeddings")
    at.radio(key="emb_source").set_value("one input of your own").run()
    assert not at.exception and any("Upload an image" in i.value for i in at.info)
    stored = save_upload([File()], tmp_path / "cache" / "uploads")
    at.session_state[state.ONE_INPUT_KEY] = str(stored)  # what the uploader's on_change stores
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.image and any("converted to the model's input (1, 8, 8)" in c.value for c in at.caption)

    model, meta = load_checkpoint(ckpt_dir / "ce_digits.pt")
    name, x = load_user_ood(stored, (1, 8, 8))
    ev = evaluate_model(model, meta, extra_ood={name: x})["scores"]
    table = next(t for t in shown_tables(at) if "ID percentile" in t.columns)
    assert set(table["score"]) == {k.split("/", 1)[1] for k in ev if k.startswith("id/")}  # every score
    for _, row in table.iterrows():
        ident, mine = ev[f"id/{row['score']}"], ev[f"{name}/{row['score']}"][0]
        assert row["value"] == as_shown(mine)
        assert row["ID percentile"] == as_shown(100 * np.mean(ident <= mine))
    assert _attribution(at) is not None


# ------------------------------------------------------------------------------- large sets: a drawn sample
def test_a_large_set_is_drawn_as_a_seeded_sample_with_its_own_indices():
    """Sets above the cap are drawn as a fixed uniform sample; each drawn row keeps its sample's
    index in the whole set (so a click reaches the right sample), with that sample's coordinates
    and score; small sets are drawn whole."""
    from ood_core.app import figures
    from ood_core.projection import Projection

    rng = np.random.default_rng(1)
    n_id, n_big, n_small, cap = 500, 700, 40, 100
    coords = {"id": rng.normal(size=(n_id, 2)).astype(np.float32), "big": rng.normal(size=(n_big, 2)).astype(np.float32),
              "small": rng.normal(size=(n_small, 2)).astype(np.float32)}
    scores = {f"{s}/msp": rng.random(len(xy)) for s, xy in coords.items()}
    labels = rng.integers(0, 3, n_id)
    proj = Projection(coords=coords, method="pca", fit_on="union", params={}, explained_variance_ratio=[0.5, 0.2])
    table = figures.embedding_table(proj, scores, "msp", labels, ["a", "b", "c"], ["big", "small"], max_per_set=cap)
    for s, n in (("id", n_id), ("big", n_big), ("small", n_small)):
        rows = table[table["set"] == s].sort_values("index")
        idx = rows["index"].to_numpy()
        assert len(idx) == min(n, cap) == len(set(idx)) and idx.min() >= 0 and idx.max() < n
        np.testing.assert_array_equal(rows["x"].to_numpy(), coords[s][idx, 0].astype(np.float64))
        np.testing.assert_array_equal(rows["y"].to_numpy(), coords[s][idx, 1].astype(np.float64))
        np.testing.assert_array_equal(rows["score"].to_numpy(), scores[f"{s}/msp"][idx])
    assert sorted(table[table["set"] == "small"]["index"]) == list(range(n_small))  # drawn whole
    for _, row in table[table["set"] == "id"].iterrows():  # each ID point in its own class's group
        assert row["group"] == f"ID: {'abc'[labels[row['index']]]}"
    again = figures.embedding_table(proj, scores, "msp", labels, ["a", "b", "c"], ["big", "small"], max_per_set=cap)
    pd.testing.assert_frame_equal(table, again)  # the same sample on every rerun
    whole = figures.embedding_table(proj, scores, "msp", labels, ["a", "b", "c"], ["big"], max_per_set=None)
    assert len(whole) == n_id + n_big


def test_the_page_says_when_it_draws_a_sample_of_the_points(app, ckpt_dir, monkeypatch):
    from ood_core.app import figures

    monkeypatch.setattr(figures, "MAP_POINTS_PER_SET", 50)
    at = _open(app)
    _, _, bench = _model_bench(ckpt_dir / "ce_digits.pt")
    table = _scatter(at).table
    assert table.groupby("set").size().max() <= 50
    total = len(bench.test.y) + sum(len(x) for x in bench.ood.values())
    assert any(f"{len(table)} of {total} points drawn" in c.value for c in at.caption)
