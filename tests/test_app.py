"""Headless tests of the Streamlit app (streamlit.testing.v1.AppTest, no browser).

The app lists checkpoints from ``$OOD_CHECKPOINT_DIR`` when set (see app.py's docstring);
the tests train a small checkpoint once per session into a temporary folder and point the
app there, so they do not depend on the files shipped in ``checkpoints/``.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch
import pytest
from streamlit.testing.v1 import AppTest

import ood_core
from ood_core.app import cached, figures, tables
from ood_core import checkpoint_store
from apptest_helpers import (APP, TIMEOUT, as_shown, charts as _charts, check_histogram, evaluation_of,
                             histograms as _hists, on_page, opened_at, roc_charts, roc_marker, shown_tables,
                             vega_charts)

pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


def _chart_spec(at: AppTest):
    """The score histogram (the page's one histogram chart)."""
    hists = _hists(at)
    assert len(hists) == 1
    return hists[0]


def test_default_run_shows_table_and_histogram(app, ckpt_dir):
    at = on_page(app)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    assert at.selectbox(key="checkpoint").value == str(ckpt_dir / "ce_digits.pt")
    assert at.metric[0].label == "ID accuracy"
    assert at.metric[0].value.endswith("%")

    df = at.dataframe[0].value
    assert list(df.columns[:7]) == ["ood_set", "group", "score", "auroc", "fpr95", "aupr_in", "aupr_out"]
    assert {"unknown", "real-photos", "uniform-noise", "mean (near)", "mean (far-real)",
            "mean (far-synthetic)"} <= set(df["ood_set"])
    assert "mean (far)" not in set(df["ood_set"])  # real and synthetic far-OOD are never merged
    assert df[["auroc", "fpr95", "aupr_in", "aupr_out"]].apply(lambda c: c.between(0, 1).all()).all()
    assert any("FPR95" in c.value and "high score = in-distribution" in c.value for c in at.caption)

    scores = evaluation_of(ckpt_dir / "ce_digits.pt")["scores"]
    check_histogram(_chart_spec(at), {"ID (test)": scores["id/msp"], "OOD: unknown": scores["unknown/msp"]})
    assert not at.get("plotly_chart")  # the page's charts are Vega-Lite: the browser never loads plotly.js


def _line_tables(at: AppTest, *columns: str) -> list:
    """The tables of the line charts whose data has these columns."""
    return [v.table for v in vega_charts(at) if set(columns) <= set(v.table.columns)]


def test_collapse_page_shows_nc_metrics_and_their_history(app, ckpt_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path))
    at = app.run()
    at.switch_page("ood_core/app/app_pages/collapse.py").run()
    assert not at.exception, [e.value for e in at.exception]
    nc = {m.label: float(m.value) for m in at.metric if m.label.startswith("nc")}
    assert set(nc) == {"nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3", "nc4"}
    _, meta = ood_core.load_checkpoint(ckpt_dir / "ce_digits.pt")
    (lines,) = _line_tables(at, "epoch", "metric", "value")
    assert {"nc1", "nc4", "jnd"} <= set(lines["metric"])
    nc1 = lines[lines["metric"] == "nc1"]
    assert list(nc1["epoch"]) == [h["epoch"] for h in meta["history"]]
    np.testing.assert_allclose(nc1["value"], [h["nc1"] for h in meta["history"]], rtol=1e-6)
    # a checkpoint without the record says how to get one
    at.selectbox(key="checkpoint").set_value(str(ckpt_dir / "ce_toy2d.pt")).run()
    assert not at.exception
    assert any("--track-geometry" in c.value for c in at.caption)
    assert not _line_tables(at, "epoch", "metric", "value")


def test_collapse_page_subspace_choice_changes_the_shares(app, ckpt_dir):
    at = app.run()
    at.switch_page("ood_core/app/app_pages/collapse.py").run()
    assert not at.exception, [e.value for e in at.exception]
    (heat,) = [v.table for v in vega_charts(at) if "cos" in v.table.columns]
    z = heat.pivot(index="mean of class", columns="vector of class", values="cos")
    assert z.shape == (6, 6) and list(z.index) == list(z.columns)  # 6 known classes
    assert np.all(np.argmax(z.to_numpy(), axis=1) == np.arange(6))  # each mean is closest to its own classifier vector
    before = shown_tables(at)[0]
    assert before["mean share outside"].between(0, 1).all()
    at.radio(key="subspace").set_value("top class-mean directions").run()
    assert not at.exception
    after = shown_tables(at)[0]
    assert not np.allclose(before["mean share outside"], after["mean share outside"])
    at.multiselect(key="subspace_sets").set_value(["textures"]).run()
    assert _hists(at)[0].sets == ["ID (test)", "OOD: textures"]


def test_jacobian_page_histograms_jnd_and_path(app, ckpt_dir):
    at = app.run()
    at.switch_page("ood_core/app/app_pages/jacobian.py").run()
    assert not at.exception, [e.value for e in at.exception]
    hist = _hists(at)
    assert len(hist) == 1 and hist[0].sets[0] == "ID (test)" and len(hist[0].sets) == 4
    # by default the table has the sets drawn (only those are computed); ticked, every OOD set
    shown = [s[len("OOD: "):] for s in hist[0].sets[1:]]
    assert list(shown_tables(at)[0]["set"]) == ["ID (test)", *shown]
    assert at.multiselect(key="jac_sets").value == shown
    at.checkbox(key="jac_every").check().run()
    assert not at.exception, [e.value for e in at.exception]
    jnd = shown_tables(at)[0]
    # the table is the plotted data's mean: recompute one entry with the library directly
    model, meta = ood_core.load_checkpoint(ckpt_dir / "ce_digits.pt")
    bench = ood_core.load_benchmark("digits")
    assert jnd["JND vs ID"].iloc[0] == 0 and len(jnd) == 1 + len(bench.ood) == 10  # ID, then every OOD set
    assert list(jnd["set"]) == ["ID (test)", *bench.ood]
    assert len(_hists(at)[0].sets) == 4  # the histogram still draws the chosen sets
    from ood_core.geometry import jacobian_norm
    direct = jacobian_norm(model, bench.ood["textures"][:128], method="estimate", n_proj=16).mean()
    assert jnd.set_index("set").loc["textures", "mean ||J||_F"] == as_shown(direct)
    (path_before,) = _line_tables(at, "t", "||J||_F")
    at.number_input(key="path_end").set_value(5).run()
    assert not at.exception
    (path_after,) = _line_tables(at, "t", "||J||_F")
    assert not np.allclose(path_after["||J||_F"], path_before["||J||_F"])
    at.radio(key="jac_method").set_value("exact").run()
    assert not at.exception
    exact = shown_tables(at)[0]
    assert not np.allclose(exact["mean ||J||_F"], jnd["mean ||J||_F"])
    assert np.allclose(exact["mean ||J||_F"], jnd["mean ||J||_F"], rtol=0.1)  # the estimate is close


def test_jacobian_page_maps_the_plane_for_toy2d(app, ckpt_dir):
    at = app.run()
    at.selectbox(key="checkpoint").set_value(str(ckpt_dir / "ce_toy2d.pt")).run()
    at.switch_page("ood_core/app/app_pages/jacobian.py").run()
    assert not at.exception, [e.value for e in at.exception]
    heat = [c for c in _charts(at) if c["data"][0]["type"] == "heatmap"]
    assert len(heat) == 1 and [t["name"] for t in heat[0]["data"][1:]] == ["ID (test)", "OOD: ring", "OOD: uniform-box"]


def test_score_and_ood_set_selection_change_the_chart(app, ckpt_dir):
    at = on_page(app)
    scores = evaluation_of(ckpt_dir / "ce_digits.pt")["scores"]
    assert at.selectbox(key="score").value == "msp"

    at.selectbox(key="score").set_value("energy").run()
    assert not at.exception
    after_score = _chart_spec(at)
    check_histogram(after_score, {"ID (test)": scores["id/energy"], "OOD: unknown": scores["unknown/energy"]})
    assert after_score.spec["encoding"]["x"]["title"] == "energy"

    at.selectbox(key="ood_set").set_value("textures").run()
    assert not at.exception
    check_histogram(_chart_spec(at), {"ID (test)": scores["id/energy"], "OOD: textures": scores["textures/energy"]})
    assert at.selectbox(key="checkpoint").value.endswith("ce_digits.pt")  # sidebar survived the reruns


def test_switching_checkpoint_resets_choices_it_lacks(app, ckpt_dir):
    at = on_page(app)
    at.selectbox(key="ood_set").set_value("textures").run()
    at.selectbox(key="checkpoint").set_value(str(ckpt_dir / "ce_toy2d.pt")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.metric[2].value == "toy2d"
    assert at.selectbox(key="ood_set").options == ["ring (far-synthetic)", "uniform-box (far-synthetic)"]
    assert at.selectbox(key="ood_set").value == "ring"
    assert _chart_spec(at).sets[1] == "OOD: ring"
    assert set(at.dataframe[0].value["ood_set"]) == {"ring", "uniform-box", "mean (far-synthetic)"}


def test_corrupt_checkpoint_shows_error(tmp_path, monkeypatch):
    (tmp_path / "broken.pt").write_bytes(os.urandom(2048))
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(tmp_path))
    at = on_page(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1
    assert "broken.pt" in at.error[0].value and "checkpoint" in at.error[0].value
    assert not at.get("plotly_chart") and not at.get("vega_lite_chart")
    assert not shown_tables(at)


def test_empty_folder_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(tmp_path))
    at = on_page(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert not at.exception
    assert not at.error
    assert any(checkpoint_store.TRAIN_COMMAND in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.get("vega_lite_chart")


def test_plain_helpers_work_without_streamlit(ckpt_dir, tmp_path):
    (tmp_path / "b.pt").write_bytes(b"x")
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / ".a.pt.123.tmp").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in checkpoint_store.list_checkpoints(tmp_path)] == ["a.pt", "b.pt"]
    assert checkpoint_store.list_checkpoints(tmp_path / "missing") == []

    res = evaluation_of(ckpt_dir / "ce_digits.pt")
    assert pickle.loads(pickle.dumps(res)).keys() == {"report", "scores", "table"}
    assert all(isinstance(v, np.ndarray) for v in res["scores"].values())
    assert tables.score_names(res["scores"]) == list(ood_core.METHODS["ce"].scores)  # the method's scores, in order
    fig = figures.histogram_figure(res["scores"]["id/msp"], res["scores"]["blobs/msp"], "msp", "blobs")
    assert list(fig.table["set"].unique()) == ["ID (test)", "OOD: blobs"]
    for _, rows in fig.table.groupby("set"):  # each set a density: its bars have area 1
        assert ((rows["end"] - rows["start"]) * rows["density"]).sum() == pytest.approx(1.0)


def test_replaced_checkpoint_is_not_served_stale(tmp_path):
    p = tmp_path / "m.pt"
    r1 = ood_core.train("ce", "toy2d", ood_core.TrainConfig(epochs=1), evaluate_after=False)
    ood_core.save_checkpoint(p, r1.model, r1.meta)
    ev1 = cached.evaluation_cached(str(p), cached.checkpoint_version(str(p)))
    r2 = ood_core.train("ce", "toy2d", ood_core.TrainConfig(epochs=1, seed=1), evaluate_after=False)
    ood_core.save_checkpoint(p, r2.model, r2.meta)
    os.utime(p, (os.stat(p).st_mtime + 5, os.stat(p).st_mtime + 5))  # make sure the mtime moves
    ev2 = cached.evaluation_cached(str(p), cached.checkpoint_version(str(p)))
    assert not np.array_equal(ev1["scores"]["id/msp"], ev2["scores"]["id/msp"])
    assert np.array_equal(ev2["scores"]["id/msp"], evaluation_of(p)["scores"]["id/msp"])


def test_roc_page_threshold_slider_moves_the_counts(app, ckpt_dir):
    at = app.run()
    at.switch_page("ood_core/app/app_pages/roc.py").run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    ev = evaluation_of(ckpt_dir / "ce_digits.pt")
    fpr95 = ev["report"]["ood"]["unknown"]["msp"]["fpr95"]
    # the slider starts at the 95%-TPR threshold, so the live FPR is the table's FPR95
    assert float(metrics["TPR"]) >= 0.95 and float(metrics["FPR"]) == pytest.approx(fpr95, abs=1e-3)
    n_id = len(ev["scores"]["id/msp"])
    assert int(metrics["ID kept"]) + int(metrics["ID rejected"]) == n_id
    (roc,) = roc_charts(at)
    assert roc.table["curve"].nunique() == 2  # 2 scores x 1 set
    assert roc_marker(roc) == pytest.approx((float(metrics["FPR"]), float(metrics["TPR"])), abs=1e-3)
    curve = roc.table[roc.table["curve"].str.startswith("msp vs unknown")]
    from sklearn.metrics import roc_curve
    fpr, tpr, _ = roc_curve(np.r_[np.ones(n_id), np.zeros(len(ev["scores"]["unknown/msp"]))],
                            np.r_[ev["scores"]["id/msp"], ev["scores"]["unknown/msp"]], drop_intermediate=False)
    assert np.trapezoid(curve["TPR"], curve["FPR"]) == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-9)
    slider = at.slider(key="thr_msp_unknown")
    slider.set_value(slider.min).run()  # lowest threshold: everything is called ID
    metrics = {m.label: m.value for m in at.metric}
    assert (float(metrics["TPR"]), float(metrics["FPR"])) == (1.0, 1.0)
    at.multiselect(key="roc_sets").set_value(["unknown", "textures"]).run()
    assert not at.exception
    assert roc_charts(at)[0].table["curve"].nunique() == 4
    assert set(shown_tables(at)[0]["ood_set"]) >= {"unknown", "textures"}


def test_feature_page_compares_two_models(app, ckpt_dir):
    at = app.run()
    at.switch_page("ood_core/app/app_pages/features.py").run()
    assert not at.exception, [e.value for e in at.exception]
    # the default companion is the other checkpoint (toy2d), which lacks the digits OOD sets
    assert at.selectbox(key="feat_compare").value.endswith("ce_toy2d.pt")
    assert len(_hists(at)) == 1 and any("no OOD set" in w.value for w in at.warning)
    table = shown_tables(at)[0].set_index(["model", "ood_set"])
    model, _ = ood_core.load_checkpoint(ckpt_dir / "ce_digits.pt")
    bench = ood_core.load_benchmark("digits")
    import torch
    with torch.no_grad():
        n_id = model(bench.test.x).features.norm(dim=1).numpy()
        n_tex = model(bench.ood["textures"]).features.norm(dim=1).numpy()
    from sklearn.metrics import roc_auc_score
    expected = roc_auc_score(np.r_[np.ones(len(n_id)), np.zeros(len(n_tex))], np.r_[n_id, n_tex])
    assert table.loc[("ce_digits.pt", "textures"), "AUROC of ||z||"] == as_shown(expected)
    at.selectbox(key="feat_compare").set_value(str(ckpt_dir / "ce_digits.pt")).run()
    assert len(_hists(at)) == 2
    before = _hists(at)[0].sets[1]
    at.selectbox(key="feat_set").set_value("blobs").run()
    assert not at.exception and _hists(at)[0].sets[1] != before == "OOD: unknown"


def test_energy_page_joint_energy_with_and_without_spectral_norm(monkeypatch):
    """On the shipped multi-label checkpoints: JointEnergy (left) beside SNoJoE (right)."""
    from conftest import CHECKPOINTS

    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(CHECKPOINTS))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.selectbox(key="checkpoint").set_value(str(CHECKPOINTS / "jointenergy_canvases.pt")).run()
    at.switch_page("ood_core/app/app_pages/energy.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="energy_compare").value.endswith("snojoe_canvases.pt")
    assert len(_hists(at)) == 2
    table = shown_tables(at)[0].set_index(["model", "ood_set"])
    for name in ("jointenergy_canvases.pt", "snojoe_canvases.pt"):
        _, meta = ood_core.load_checkpoint(CHECKPOINTS / name)
        for s, per_score in meta["metrics"]["ood"].items():  # stored at training time, by the evaluator
            assert table.loc[(name, s), "AUROC"] == as_shown(per_score["joint_energy"]["auroc"])
    def terms(at):
        return next(v.table for v in vega_charts(at) if list(v.table.columns) == ["label", "term"])

    bars = terms(at)
    at.number_input(key="energy_sample").set_value(3).run()
    assert not at.exception
    assert not terms(at)["term"].equals(bars["term"])


def test_energy_page_on_a_single_label_model_matches_the_energy_score(app, ckpt_dir):
    at = app.run()
    at.switch_page("ood_core/app/app_pages/energy.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = shown_tables(at)[0].set_index(["model", "ood_set"])
    ev = evaluation_of(ckpt_dir / "ce_digits.pt")
    for s, per_score in ev["report"]["ood"].items():
        assert table.loc[("ce_digits.pt", s), "AUROC"] == as_shown(per_score["energy"]["auroc"])


def test_jacobian_norms_come_set_by_set_with_progress(ckpt_dir):
    """The page's per-set cache gives the numbers of geometry.jacobian_norms_by_set and reports
    progress after each set (exact norms take seconds per set)."""
    from ood_core.geometry import jacobian_norms_by_set

    path = str(ckpt_dir / "ce_digits.pt")
    calls = []
    norms = cached.jacobian_norms_cached(path, cached.checkpoint_version(path), "estimate", 8, 32,
                                      progress=lambda done, total, name: calls.append((done, total, name)))
    model, _ = ood_core.load_checkpoint(path)
    expected = jacobian_norms_by_set(model, ood_core.load_benchmark("digits"), method="estimate", n_proj=8,
                                     probe_size=32)
    assert list(norms) == list(expected) and [c[2] for c in calls] == list(expected)
    assert [c[0] for c in calls] == list(range(1, len(expected) + 1)) and {c[1] for c in calls} == {len(expected)}
    for name in expected:
        np.testing.assert_allclose(norms[name], expected[name], rtol=1e-6)
    # only some sets (the page's chosen ones): the ID split first, the benchmark's order, unknown names skipped
    some = cached.jacobian_norms_cached(path, cached.checkpoint_version(path), "estimate", 8, 32,
                                        sets=["textures", "blobs", "no-such-set"])
    order = [n for n in expected if n in ("textures", "blobs")]
    assert list(some) == ["id", *order]
    for name in some:
        np.testing.assert_allclose(some[name], expected[name], rtol=1e-6)


def test_roc_page_adds_any_registered_detector(app, ckpt_dir):
    """A detector the checkpoint's method does not report (rmds) is offered, computed on the
    cached outputs and drawn; its AUROC is sklearn's on scores computed outside the app."""
    from sklearn.metrics import roc_auc_score

    from ood_core import load_checkpoint
    from ood_core.data import load_benchmark_from_spec
    from ood_core.scores import make_score

    at = app.run()
    at.switch_page("ood_core/app/app_pages/roc.py").run()
    picker = at.multiselect(key="roc_detectors")
    assert "rmds" in picker.options and "msp" not in picker.options  # msp is already shown
    picker.set_value(["rmds"]).run()
    at.multiselect(key="roc_scores").set_value(["rmds"]).run()
    assert not at.exception, [e.value for e in at.exception]
    (curve,) = [c for c in roc_charts(at)[0].table["curve"].unique() if c.startswith("rmds vs unknown")]
    model, meta = load_checkpoint(ckpt_dir / "ce_digits.pt")
    bench = load_benchmark_from_spec(meta["dataset"])
    with torch.no_grad():
        train, test, ood = (model(x) for x in (bench.train.x, bench.test.x, bench.ood["unknown"]))
    s = make_score("rmds").fit(train, bench.train.y, model)
    want = roc_auc_score(np.r_[np.ones(len(bench.test.x)), np.zeros(len(bench.ood["unknown"]))], np.r_[s(test), s(ood)])
    assert f"(AUROC {want:.3f})" in curve


def test_models_page_shows_a_readable_model_card(app, ckpt_dir):
    """The start page reads as a card (method, data, architecture, training, headline metrics
    per group), the raw metadata one click away; the numbers are the evaluation's own."""
    at = on_page(app)
    assert not at.exception
    card_table, headline = shown_tables(at)[:2]
    card = dict(zip(card_table.iloc[:, 0], card_table["value"]))
    assert card["Method"].startswith("ce: cross-entropy") and card["Known classes"] == "0, 1, 2, 3, 4, 5"
    assert card["Architecture"].startswith("smallcnn backbone, linear head") and "3 epochs" in card["Training"]
    ev = evaluation_of(ckpt_dir / "ce_digits.pt")
    want = 100 * ev["report"]["group_means"]["near"]["msp"]["auroc"]
    assert headline.set_index("score").loc["msp", "AUROC % near"] == pytest.approx(round(want, 1))
    assert list(headline.columns)[1:4] == ["AUROC % near", "AUROC % far-real", "AUROC % far-synthetic"]
    assert any(e.label == "Raw metadata" for e in at.expander)


def test_a_shared_link_reproduces_the_view_and_a_stale_one_falls_back(app, ckpt_dir):
    """The checkpoint, score and OOD set live in the URL; opening it sets them; a value that is
    not available falls back to the default with a notice, never an exception."""
    at = on_page(app)
    at.selectbox(key="score").set_value("energy").run()
    at.selectbox(key="ood_set").set_value("textures").run()
    shared = {k: at.query_params[k] for k in at.query_params}
    assert shared["checkpoint"] == ["ce_digits.pt"] or shared["checkpoint"] == "ce_digits.pt"
    link = [c.value for c in at.sidebar.code]
    assert link and "score=energy" in link[0] and "ood=textures" in link[0]

    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, TIMEOUT

    fresh = opened_at(AppTest.from_file(APP, default_timeout=TIMEOUT), "models",
                      {"checkpoint": "ce_toy2d.pt", "score": "energy", "ood": "uniform-box"})
    assert not fresh.exception
    assert fresh.selectbox(key="checkpoint").value == str(ckpt_dir / "ce_toy2d.pt")
    assert (fresh.selectbox(key="score").value, fresh.selectbox(key="ood_set").value) == ("energy", "uniform-box")

    stale = AppTest.from_file(APP, default_timeout=TIMEOUT)  # opened at "/" (Home): the sidebar's checkpoint
    stale.query_params.update({"checkpoint": "gone.pt"})
    stale.run()
    assert not stale.exception
    assert stale.selectbox(key="checkpoint").value == str(ckpt_dir / "ce_digits.pt")  # the default
    assert "`checkpoint=gone.pt` is not available here" in " ".join(i.value for i in stale.info)
    stale = opened_at(AppTest.from_file(APP, default_timeout=TIMEOUT), "models", {"ood": "nowhere"})
    assert not stale.exception and stale.selectbox(key="ood_set").value == "unknown"
    assert "`ood=nowhere` is not available here" in " ".join(i.value for i in stale.info)

