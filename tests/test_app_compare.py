"""AppTest of the Compare page, the sidebar's user OOD upload, figure/table downloads on every
page and the teaching-mode toggle; plain tests of save_upload, comparison_table, figure_html."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from streamlit.testing.v1 import AppTest

import ood_core
from apptest_helpers import APP, TIMEOUT, as_shown, charts, evaluation_of, histograms, on_page, roc_charts, shown_tables
from ood_core.app import figures, state, tables, widgets
from ood_core import checkpoint_store, uploads
from ood_core.errors import DataError

pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


class Upload:
    """Stands in for Streamlit's UploadedFile (a name and the bytes)."""

    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def compare_dir(ckpt_dir, tmp_path_factory):
    """ce_digits + a 2-epoch l2norm digits model + ce_toy2d (another dataset)."""
    folder = tmp_path_factory.mktemp("compare")
    for name in ("ce_digits.pt", "ce_toy2d.pt"):
        shutil.copy(ckpt_dir / name, folder / name)
    r = ood_core.train("l2norm", "digits", ood_core.TrainConfig(epochs=2))
    ood_core.save_checkpoint(folder / "l2norm_digits.pt", r.model, r.meta)
    return folder


@pytest.fixture
def compare_app(compare_dir, monkeypatch):
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(compare_dir))
    monkeypatch.setenv("OOD_CACHE_DIR", str(compare_dir / "cache"))
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


# ------------------------------------------------------------------ plain functions
def test_save_upload_is_content_addressed_and_confined(tmp_path):
    a = _npy(np.zeros((3, 8, 8), np.uint8))
    b = _npy(np.ones((3, 8, 8), np.uint8))
    p1 = uploads.save_upload([Upload("../../../escape.npy", a)], tmp_path)
    assert p1.name == "escape.npy" and p1.parent.parent == tmp_path  # the crafted path is reduced to its name
    assert p1.read_bytes() == a
    assert uploads.save_upload([Upload("escape.npy", a)], tmp_path) == p1  # same content: same place
    assert uploads.save_upload([Upload("escape.npy", b)], tmp_path) != p1
    assert not list(tmp_path.glob(".upload-*"))  # no temporary folder left behind


def test_save_upload_image_folder_loads_as_an_ood_set(tmp_path):
    rng = np.random.default_rng(0)
    files = [Upload(f"img{i}.png", _png(rng.integers(0, 255, (12, 12), dtype=np.uint8))) for i in range(5)]
    folder = uploads.save_upload(files, tmp_path)
    assert folder.is_dir() and len(list(folder.iterdir())) == 5
    name, x = ood_core.data.load_user_ood(folder, (1, 8, 8))
    assert name == "uploaded_images" and tuple(x.shape) == (5, 1, 8, 8)


@pytest.mark.parametrize("files, message", [
    ([], "no file uploaded"),
    ([Upload("notes.txt", b"hello")], "unsupported file type '.txt'"),
    ([Upload("a.npy", b"x"), Upload("b.png", b"y")], "one .npy/.npz array file on its own"),
    ([Upload("a.png", b"x"), Upload("sub/a.png", b"y")], "share a name"),
])
def test_save_upload_refuses_what_it_cannot_use(tmp_path, files, message):
    with pytest.raises(DataError, match=message.replace(".", r"\.").replace("(", r"\(")):
        uploads.save_upload(files, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_comparison_table_reads_each_models_report():
    def result(auroc):
        m = {"auroc": auroc, "fpr95": 1 - auroc, "aupr_in": auroc, "aupr_out": auroc}
        return {"report": {"ood": {"blobs": {"msp": m, "energy": m}}}, "method": "x"}

    df = tables.comparison_table({"a.pt": result(0.7), "b.pt": result(0.9)}, "blobs", ["energy"])
    assert list(df["model"]) == ["b.pt", "a.pt"] and list(df["score"]) == ["energy", "energy"]
    assert list(df["auroc"]) == [0.9, 0.7]
    assert len(tables.comparison_table({"a.pt": result(0.7)}, "blobs")) == 2
    assert tables.comparison_table({"a.pt": result(0.7)}, "other set").empty


def test_a_vega_chart_downloads_as_a_png_drawn_offline():
    fig = figures.distributions_figure({"ID (test)": np.arange(50.0), "OOD: x": np.arange(20.0) + 30}, "s", "t")
    png = figures.vega_png(fig, width=300, scale=1)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    assert image.width >= 300 and image.height >= 300  # the plot area plus axes, title and legend
    assert len(set(image.convert("RGB").getdata())) > 10  # drawn: not a blank canvas


def test_figure_html_stands_alone():
    fig = figures.plane_map_figure(np.arange(3.0), np.arange(2.0), np.zeros((2, 3)), {"probe set": np.ones((2, 2))})
    html = figures.figure_html(fig)
    assert html.lstrip().lower().startswith(("<html", "<!doctype html"))
    assert "<script src=\"http" not in html and len(html) > 1_000_000  # plotly.js inlined: opens offline
    assert "probe set" in html  # the figure's own data is embedded


# ------------------------------------------------------------------ Compare page
def test_compare_page_defaults_to_same_dataset_models_and_one_table(compare_app, compare_dir):
    at = compare_app.run()
    at.switch_page("ood_core/app/app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    chosen = at.multiselect(key="compare_models").value
    assert [p.split("/")[-1] for p in chosen] == ["ce_digits.pt", "l2norm_digits.pt"]  # not the toy2d model
    assert at.selectbox(key="compare_score").value == "energy"
    assert [h.title for h in histograms(at)] == ["ce_digits.pt", "l2norm_digits.pt"]  # one column per model
    table = shown_tables(at)[0]
    assert set(table["score"]) == {"energy"} and len(table) == 2
    ood_set = at.selectbox(key="compare_set").value
    # each row equals an evaluation computed outside the app, and AUROC equals sklearn's
    for p in chosen:
        ev = evaluation_of(p)
        row = table[table["model"] == p.split("/")[-1]].iloc[0]
        assert row["fpr95"] == as_shown(ev["report"]["ood"][ood_set]["energy"]["fpr95"])
        id_s, ood_s = ev["scores"]["id/energy"], ev["scores"][f"{ood_set}/energy"]
        expected = roc_auc_score(np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s])
        assert row["auroc"] == as_shown(expected)

    at.selectbox(key="compare_score").set_value("msp").run()
    assert set(shown_tables(at)[0]["score"]) == {"msp"}
    at.radio(key="compare_plot").set_value("ROC curve").run()
    assert not at.exception and not histograms(at)
    assert [v.title for v in roc_charts(at)] == ["ce_digits.pt", "l2norm_digits.pt"]
    at.toggle(key="compare_all_scores").set_value(True).run()
    assert len(shown_tables(at)[0]) > 2 and shown_tables(at)[0]["score"].nunique() > 1


def test_compare_page_needs_two_models_and_shows_a_foreign_one_as_a_warning(compare_app, compare_dir):
    at = compare_app.run()
    at.switch_page("ood_core/app/app_pages/compare.py").run()
    at.multiselect(key="compare_models").set_value([str(compare_dir / "ce_digits.pt")]).run()
    assert any("at least two" in i.value for i in at.info) and not charts(at) and not histograms(at)
    at.multiselect(key="compare_models").set_value(
        [str(compare_dir / "ce_digits.pt"), str(compare_dir / "ce_toy2d.pt")]).run()
    assert not at.exception
    # toy2d shares scores but not the digits OOD sets: its column warns, the other still draws
    assert any("has no OOD set" in w.value for w in at.warning) and len(histograms(at)) == 1


# ------------------------------------------------------------------ user OOD set in the sidebar
def test_uploaded_ood_set_is_scored_on_every_page(app, ckpt_dir, tmp_path):
    rng = np.random.default_rng(1)
    upload = uploads.save_upload([Upload("scribbles.npy", _npy(rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)))],
                             tmp_path)
    at = app
    at.session_state[state.USER_OOD_KEY] = str(upload)
    on_page(at)
    assert not at.exception, [e.value for e in at.exception]
    assert any("scribbles" in s.value and "30 samples" in s.value for s in at.sidebar.success)
    table = at.dataframe[0].value  # the Models page's metric table
    rows = table[table["ood_set"] == "scribbles"]
    assert set(rows["group"]) == {"user"} and len(rows) == table["score"].nunique()

    # the AUROC of ||z|| equals sklearn's on features computed here, outside the app
    model, _ = ood_core.load_checkpoint(ckpt_dir / "ce_digits.pt")
    _, x_user = ood_core.data.load_user_ood(upload, (1, 8, 8))
    with torch.no_grad():
        n_id = model(ood_core.load_benchmark("digits").test.x).features.norm(dim=1).numpy()
        n_user = model(x_user).features.norm(dim=1).numpy()
    expected = roc_auc_score(np.r_[np.ones(len(n_id)), np.zeros(len(n_user))], np.r_[n_id, n_user])
    assert rows.set_index("score").loc["feature_norm", "auroc"] == pytest.approx(expected, abs=1e-6)

    for page, key in (("features.py", "feat_set"), ("energy.py", "energy_set")):
        at.switch_page(f"ood_core/app/app_pages/{page}").run()
        assert not at.exception and "scribbles" in at.selectbox(key=key).options
    at.switch_page("ood_core/app/app_pages/roc.py").run()
    assert "scribbles" in at.multiselect(key="roc_sets").options


def test_upload_that_does_not_fit_the_model_is_explained_and_ignored(app, ckpt_dir, tmp_path):
    upload = uploads.save_upload([Upload("points.npy", _npy(np.zeros((10, 2), np.float32)))], tmp_path)
    at = app
    at.session_state[state.USER_OOD_KEY] = str(upload)
    on_page(at)  # ce_digits takes 8x8 images, not 2-D points
    assert not at.exception
    assert any("does not fit" in e.value for e in at.sidebar.error)
    assert "points" not in set(at.dataframe[0].value["ood_set"])  # the pages go on without it
    at.selectbox(key="checkpoint").set_value(str(ckpt_dir / "ce_toy2d.pt")).run()  # now it fits
    assert not at.exception and any("points" in s.value for s in at.sidebar.success)
    assert "points" in set(at.dataframe[0].value["ood_set"])
    at.button(key="user_ood_remove").click().run()
    assert state.USER_OOD_KEY not in at.session_state and "points" not in set(at.dataframe[0].value["ood_set"])


# ------------------------------------------------------------------ downloads and teaching mode
PAGES = ["models", "jacobian", "collapse", "features", "energy", "roc", "embeddings", "compare"]


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_and_table_can_be_downloaded(app, page):
    at = app.run()
    at.switch_page(f"ood_core/app/app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    buttons = [b.proto.label for b in at.get("download_button")]
    assert buttons.count("Download figure (HTML)") == len(at.get("plotly_chart"))
    assert buttons.count(widgets.VEGA_PNG_LABEL) == buttons.count(widgets.VEGA_CSV_LABEL) == len(
        at.get("vega_lite_chart"))
    # every table has its button, but the Models page's model card and headline tables
    assert buttons.count("Download table (CSV)") == len(shown_tables(at)) - (2 if page == "models" else 0)


def test_teaching_mode_opens_the_explanations(app):
    at = app.run()
    at.switch_page("ood_core/app/app_pages/roc.py").run()
    explain = [e for e in at.expander if e.label == "What am I looking at?"]
    assert len(explain) == 1 and not explain[0].proto.expanded
    at.toggle(key="teaching").set_value(True).run()
    for page in PAGES:
        at.switch_page(f"ood_core/app/app_pages/{page}.py").run()
        explain = [e for e in at.expander if e.label == "What am I looking at?"]
        assert len(explain) == 1 and explain[0].proto.expanded, page


def test_companion_is_the_methods_baseline_or_a_method_compared_with_it():
    methods = {"/c/ce_digits.pt": "ce", "/c/ib_digits.pt": "ib", "/c/l2norm_digits.pt": "l2norm",
               "/c/jointenergy_canvases.pt": "jointenergy", "/c/snojoe_canvases.pt": "snojoe", "/c/broken.pt": None}
    options = sorted(methods)
    pick = lambda current, prefer=(): checkpoint_store.companion(options, current, methods.get, prefer)  # noqa: E731
    assert pick("/c/l2norm_digits.pt") == "/c/ce_digits.pt"  # Method.baseline
    assert pick("/c/snojoe_canvases.pt") == "/c/jointenergy_canvases.pt"
    assert pick("/c/jointenergy_canvases.pt") == "/c/snojoe_canvases.pt"  # a baseline: the method compared with it
    assert pick("/c/ce_digits.pt") == "/c/ib_digits.pt"  # several: the first by name ...
    assert pick("/c/ce_digits.pt", ("l2norm",)) == "/c/l2norm_digits.pt"  # ... unless the page prefers one
    assert pick("/c/broken.pt") == "/c/ce_digits.pt"  # unreadable: the first other file
    assert checkpoint_store.companion(["/c/a.pt"], "/c/a.pt", methods.get) == "/c/a.pt"  # alone: itself


def test_a_page_writing_the_url_does_not_set_another_pages_controls(compare_app):
    """The Models page writes score=msp into the URL; the Compare page, opened next in the same
    session, keeps its own default (energy): only the URL a session opened with sets widgets."""
    at = on_page(compare_app)
    assert at.query_params["score"] in ("msp", ["msp"])
    at.switch_page("ood_core/app/app_pages/compare.py").run()
    assert not at.exception
    assert at.selectbox(key="compare_score").value == "energy"


def test_compare_default_is_the_model_and_its_baseline_on_the_same_dataset():
    # the shipped folder: five digits models besides CE, a toy2d CE and two canvas models
    from conftest import CHECKPOINTS
    from ood_core.app import widgets

    options = [str(p) for p in sorted(CHECKPOINTS.glob("*.pt"))]
    named = {p.rsplit("/", 1)[-1]: p for p in options}
    pick = lambda name: [p.rsplit("/", 1)[-1] for p in widgets.same_dataset_default(options, named[name])]
    assert pick("l2norm_digits.pt") == ["l2norm_digits.pt", "ce_digits.pt"]  # its paper's baseline
    assert pick("snojoe_canvases.pt") == ["snojoe_canvases.pt", "jointenergy_canvases.pt"]
    ce = pick("ce_digits.pt")  # a baseline: one of the digits methods built on it, never another dataset
    assert ce[0] == "ce_digits.pt" and len(ce) == 2 and ce[1].endswith("_digits.pt")
    assert pick("ce_toy2d.pt") == ["ce_toy2d.pt"]  # alone on its dataset: the page asks for a second
