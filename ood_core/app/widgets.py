"""The app's widget helpers: drawing a figure or table with its download, stopping a page on an
error, the chosen checkpoint at a page's top, the "Compare with" picker and the column-per-model
layout of the two-model pages, the threshold slider, and the sidebar's upload callbacks."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ..checkpoint_store import companion, list_checkpoints, same_dataset_checkpoints
from ..claims import MECHANISMS
from ..errors import OODCoreError
from ..metrics import confusion_at_threshold, threshold_at_tpr
from ..uploads import save_upload, save_weights_upload  # noqa: F401 (save_weights_upload: the Models page)
from . import cached, tables
from .cached import checkpoint_version, load_model_cached, outputs_cached, user_ood_set
from .figures import VegaChart, distributions_figure, figure_html, mechanism_figure, vega_png
from .state import USER_OOD_ERROR_KEY, USER_OOD_KEY, USER_OOD_NONCE_KEY, chosen_checkpoint

# core names the pages use through here (pages import only ood_core.app)
from ..data import IMAGE_SUFFIXES  # noqa: E402,F401
from ..checkpoint_store import CHECKPOINT_ENV, checkpoint_dir  # noqa: E402,F401
from ..views import describe_sample, detector_options, label_names, other_class_index  # noqa: E402,F401

# the download buttons under a Vega-Lite chart (short: they sit side by side in narrow columns)
VEGA_PNG_LABEL, VEGA_CSV_LABEL = "Figure (PNG)", "Data (CSV)"
ATTRIBUTION_STEPS = (32, 64, 128, 256)  # IG path points offered by the Embeddings page
EMBEDDING_SELECTION_HELP = "Click a point to show it below (or pick a sample by hand)."


PROGRESS_DELAY_S = 0.5  # as Streamlit's spinners: work done sooner draws no bar
PROGRESS_EVERY_S = 0.25  # at most four updates a second


class DelayedProgress:
    """A progress bar for work of unknown length: drawn only once the work has run for
    ``delay_s`` (default :data:`PROGRESS_DELAY_S`), then updated at most every ``every_s``
    (:data:`PROGRESS_EVERY_S`); :meth:`empty` removes it. Why: every update is a message the
    browser renders the page again for, and a page opened cold on 2 cores spent about a tenth of
    a second on a bar that came and went within the first render. ``make_bar`` (default
    ``st.progress``) and ``clock`` (``time.monotonic``) are parameters for the tests."""

    def __init__(self, delay_s: float = PROGRESS_DELAY_S, every_s: float = PROGRESS_EVERY_S,
                 make_bar=None, clock=time.monotonic):
        self._delay, self._every, self._clock = delay_s, every_s, clock
        self._make = make_bar if make_bar is not None else (lambda: st.progress(0.0))
        self._start, self._last, self.bar = clock(), None, None

    def update(self, fraction: float, text: str) -> bool:
        """Show ``fraction`` (0 to 1) and ``text`` if it is time to; returns whether it drew."""
        now = self._clock()
        if now - self._start < self._delay or (self._last is not None and now - self._last < self._every):
            return False
        if self.bar is None:
            self.bar = self._make()
        self.bar.progress(min(max(fraction, 0.0), 1.0), text=text)
        self._last = now
        return True

    def empty(self) -> None:
        if self.bar is not None:
            self.bar.empty()


def outputs_with_progress(path: str, version: tuple, user_ood: str | None = None) -> dict:
    """:func:`outputs_cached` with a :class:`DelayedProgress` bar while sets are extracted or
    read from the disk cache (nothing is drawn when every set is already in memory, or when
    the extraction takes under half a second)."""
    bar = DelayedProgress()

    def show(name, done, total, from_cache):
        how = "read from the feature cache" if from_cache else f"{done:,}/{total:,} samples"
        bar.update(done / max(total, 1), f"Features of `{name}`: {how}")

    try:
        return outputs_cached(path, version, user_ood, progress=show)
    finally:
        bar.empty()


def rerun_when_done(future, every_s: float = 1.0) -> None:
    """Poll ``future`` from a fragment every ``every_s`` seconds (only the fragment reruns) and
    rerun the whole page once it is done."""
    @st.fragment(run_every=every_s)
    def _poll():
        if future.done():
            st.rerun()

    _poll()


def user_ood() -> str | None:
    """The uploaded OOD set's path stored by the sidebar when it loads for the chosen
    checkpoint's input format, else None (the sidebar shows why). Pages pass it to the cached
    functions' ``user_ood`` parameter."""
    upload, path = st.session_state.get(USER_OOD_KEY), chosen_checkpoint()
    if not upload or not path:
        return None
    try:
        user_ood_set(path, checkpoint_version(path), upload)
    except OODCoreError:
        return None
    return upload


def forget_upload() -> None:
    """``on_click`` of the sidebar's "Remove it": drop the user's OOD set and empty the
    uploaders (they get new keys; an uploader's value cannot be set from code). The stored
    files stay in the cache folder, so uploading them again is instant."""
    st.session_state.pop(USER_OOD_KEY, None)
    st.session_state.pop(USER_OOD_ERROR_KEY, None)
    st.session_state[USER_OOD_NONCE_KEY] = st.session_state.get(USER_OOD_NONCE_KEY, 0) + 1


def store_upload(widget_key: str, store_key: str = USER_OOD_KEY, error_key: str = USER_OOD_ERROR_KEY) -> None:
    """``on_change`` callback of an uploader (the sidebar's OOD set, the Embeddings page's one
    input): store the files of ``widget_key`` with :func:`save_upload` and remember the path in
    ``st.session_state[store_key]`` (or forget it when the files are removed); an error is kept
    in ``st.session_state[error_key]`` for the page to show."""
    value = st.session_state.get(widget_key)
    files = value if isinstance(value, list) else [value] if value is not None else []
    st.session_state.pop(error_key, None)
    st.session_state.pop(store_key, None)
    if not files:
        return
    try:
        st.session_state[store_key] = str(save_upload(files))
    except (OODCoreError, OSError, ValueError) as e:
        st.session_state[error_key] = str(e)


def require_checkpoint(features: bool = True):
    """``(path, version, model, meta)`` of the checkpoint chosen in the sidebar, for a page's top.

    Stops the page when none is chosen (the router already says how to get one) or shows the
    file's error and stops when it cannot be read. With ``features`` the model's outputs on
    every set are made ready first, with a progress bar (:func:`outputs_with_progress`).
    """
    path = chosen_checkpoint()
    if not path:
        st.stop()
    try:
        version = checkpoint_version(path)
        model, meta = load_model_cached(path, version)
    except OODCoreError as e:
        st.error(str(e))
        st.stop()
    if features:
        or_stop(outputs_with_progress, path, version, user_ood())
    return path, version, model, meta


def compare_with(path: str, prefer: tuple[str, ...], key: str) -> str:
    """Sidebar-independent "Compare with" selectbox over the checkpoints beside ``path``;
    defaults to :func:`ood_core.checkpoint_store.companion` (the method's baseline, or a
    method of ``prefer`` beside a baseline). Returns the chosen path."""
    options = sibling_checkpoints(path)
    default = companion(options, path, cached.checkpoint_method, prefer)
    return st.selectbox("Compare with", options, index=options.index(default) if default in options else 0, key=key,
                        format_func=lambda p: Path(p).name)


def show_figure(fig, key: str, file_stem: str, container=None, on_select="ignore", selection_mode=None):
    """Draw ``fig`` (in ``container``, default the page) with a way to save it.

    A plotly figure: the chart's camera button saves a PNG named ``file_stem`` (drawn by the
    browser), and a button below downloads an interactive HTML file, built only when clicked
    (deferred), so an unused button costs nothing on a rerun. ``on_select``/``selection_mode`` go
    to ``st.plotly_chart`` (``selection_mode`` None: points, box and lasso); returns its value (the
    selection state when ``on_select="rerun"``).
    A :class:`~ood_core.app.figures.VegaChart`: ``st.vega_lite_chart`` and two deferred buttons,
    the figure as a PNG (:func:`~ood_core.app.figures.vega_png`) and the data drawn (CSV);
    ``on_select``/``selection_mode`` (the spec's selection parameters to use, None: all) go to
    ``st.vega_lite_chart``, whose value is returned (None when selections are ignored).
    """
    where = container if container is not None else st
    if isinstance(fig, VegaChart):
        composed = "hconcat" in fig.spec  # side-by-side views keep their own sizes
        sizes = {"width": "content"} if composed else {"width": "stretch",
                                                        **({"height": fig.height} if fig.height else {})}
        event = where.vega_lite_chart(fig.table, fig.spec, key=key, on_select=on_select,
                                      selection_mode=selection_mode, **sizes)
        png, csv = where.columns(2)
        png.download_button(VEGA_PNG_LABEL, data=lambda: vega_png(fig), file_name=f"{file_stem}.png",
                            mime="image/png", on_click="ignore", key=f"{key}_png", icon=":material/download:",
                            help="The figure as a PNG image")
        csv.download_button(VEGA_CSV_LABEL, data=lambda: fig.table.to_csv(index=False).encode("utf-8"),
                            file_name=f"{file_stem}.csv", mime="text/csv", on_click="ignore", key=f"{key}_csv",
                            icon=":material/download:",
                            help="The numbers drawn (for a histogram: each set's bins and densities)")
        return None if on_select == "ignore" else event
    event = where.plotly_chart(fig, key=key, on_select=on_select,
                               selection_mode=selection_mode or ("points", "box", "lasso"),
                               config={"toImageButtonOptions": {"format": "png", "filename": file_stem, "scale": 2}})
    where.download_button("Download figure (HTML)", data=lambda: figure_html(fig), file_name=f"{file_stem}.html",
                          mime="text/html", on_click="ignore", key=f"{key}_html",
                          help="The camera icon on the chart saves a PNG")
    return event


STATIC_TABLE_ROWS = 30


def static_table(table: pd.DataFrame, index: bool = False, container=None) -> None:
    """``table`` drawn as a Markdown table (:func:`~ood_core.app.tables.markdown_table`; ``index``:
    the index as the first column), without a download button."""
    (container if container is not None else st).markdown(tables.markdown_table(table, index=index))


def show_table(table: pd.DataFrame, key: str, file_stem: str, container=None, grid: bool | None = None) -> None:
    """A table (no index) and a button that downloads it as CSV.

    ``grid``: True for the scrollable, sortable ``st.dataframe`` grid, False for a static
    Markdown table (:func:`~ood_core.app.tables.markdown_table`); None (default) takes the grid
    only above :data:`STATIC_TABLE_ROWS` rows. Why not always the grid: its scripts (about
    1.2 MB) load with the first grid a browser shows, which cost a page opened cold about 0.3 s
    on 2 cores (``benchmarks/chart_libraries.py``), and a short table reads as well without
    them. The CSV holds the unrounded values.
    """
    where = container if container is not None else st
    if grid is None:
        grid = len(table) > STATIC_TABLE_ROWS
    if grid:
        where.dataframe(table, hide_index=True, key=key)
    else:
        static_table(table, container=where)
    where.download_button("Download table (CSV)", data=table.to_csv(index=False).encode("utf-8"),
                          file_name=f"{file_stem}.csv", mime="text/csv", on_click="ignore", key=f"{key}_csv")


def detector_picker(result: dict, meta: dict, key: str) -> tuple[str, ...]:
    """A multiselect of the registry's other detectors for this model's task (beside the scores
    the checkpoint reports); returns the chosen names, in registry order."""
    from ..scores import COSTS, SCORES

    task = (meta.get("dataset") or {}).get("task", "multiclass")
    options = detector_options(task, tables.score_names(result["scores"]))
    if any(v not in options for v in st.session_state.get(key, [])):
        st.session_state.pop(key, None)  # another checkpoint: other task, other own scores
    chosen = st.multiselect("More detectors", options, key=key, format_func=lambda n: n + (
        " (needs input gradients)" if SCORES[n].cost == "inputs" else ""),
        help="Every registered detector for this task, computed on the cached features and logits "
             f"({COSTS['outputs']}) unless marked; `ood-lab list` gives each one's formula and paper.")
    return tuple(n for n in options if n in chosen)


def _url_widget(widget, multi: bool, default_kw: str, label: str, options: list, key: str, param: str,
                container, kwargs: dict, text_of=str):
    """One widget of ``container`` whose value is shared through the URL (see
    :func:`ood_core.app.state.from_url`); a value set from the session or the URL replaces the
    widget's own default (``default_kw``), so Streamlit is never given both. ``text_of(option)``
    is an option's text in the URL (default ``str``: a step number 3 is "3"; a checkpoint path
    is shown by its file name)."""
    from .state import from_url, to_url

    from_url(key, param, options, multi=multi, to_option=lambda v: next((o for o in options if text_of(o) == v), v))
    if key in st.session_state:
        kwargs.pop(default_kw, None)
    value = getattr(container or st, widget)(label, options, key=key, **kwargs)
    if value is not None:
        to_url(param, value, to_text=text_of)
    return value


def url_selectbox(label: str, options: list, key: str, param: str, container=None, text_of=str, **kwargs):
    """``st.selectbox`` whose value is shared through the URL (``?param=value``); returns the chosen option."""
    return _url_widget("selectbox", False, "index", label, options, key, param, container, kwargs, text_of)


def url_radio(label: str, options: list, key: str, param: str, container=None, text_of=str, **kwargs):
    """``st.radio`` whose value is shared through the URL (``?param=value``); returns the chosen option."""
    return _url_widget("radio", False, "index", label, options, key, param, container, kwargs, text_of)


def url_multiselect(label: str, options: list, key: str, param: str, container=None, text_of=str, **kwargs) -> list:
    """``st.multiselect`` whose values are shared through the URL (``?param=a,b``)."""
    return _url_widget("multiselect", True, "default", label, options, key, param, container, kwargs, text_of)


def show_url_notices() -> None:
    """Show (once) why values of the opened link were not used (the router calls this inside
    its sidebar slot)."""
    from .state import url_notices

    for note in url_notices():
        st.info(note)


def link_to_view() -> None:
    """A box with the link to this view (the page and its controls), to copy (the router draws it
    in its sidebar slot)."""
    from urllib.parse import urlencode, urlsplit

    base = urlsplit(str(st.context.url or ""))
    query = urlencode({k: st.query_params[k] for k in st.query_params})
    url = f"{base.scheme}://{base.netloc}{base.path}" if base.netloc else base.path or "/"
    with st.popover("Link to this view", width="stretch"):
        st.code(f"{url}?{query}" if query else url, language=None)
        st.caption("Opens this page with the same checkpoint and controls.")


def or_stop(fn, *args):
    """``fn(*args)``, or the error shown and the page stopped when it raises OODCoreError."""
    try:
        return fn(*args)
    except OODCoreError as e:
        st.error(str(e))
        st.stop()


def side_by_side(paths: list[str], fetch, ood_set: str, sets=lambda result: result, user_ood: str | None = None):
    """One column per checkpoint in ``paths``: yields ``(side, column, file name, result)``
    with ``result = fetch(path, version, user_ood)`` for each checkpoint that can be read and whose
    ``sets(result)`` holds ``ood_set``. An unreadable file shows its error and one from
    another dataset a warning in its column, and is skipped. ``side`` is "left", "right", ...
    (for unique widget keys)."""
    for side, col, p in zip(("left", "right", "third", "fourth"), st.columns(len(paths)), paths):
        name = Path(p).name
        try:
            result = fetch(p, checkpoint_version(p), user_ood)
        except OODCoreError as e:  # a broken second file must not take the page down
            col.error(str(e))
            continue
        if ood_set not in sets(result):
            col.warning(f"{name} has no OOD set {ood_set!r} (another dataset)")
            continue
        yield side, col, name, result


def claim_verdicts() -> dict[str, str]:
    """{claim key: verdict} of the stored ``benchmarks/compare.py`` results, or {} without them."""
    try:
        results = cached.claims_results()
    except OODCoreError:
        return {}
    return {c["key"]: c["verdict"] for c in results.get("claims") or []}


def verdict_markdown(verdict: str) -> str:
    """A claim's verdict as a coloured badge: green holds, orange partly, red does not, grey none."""
    color = {"holds": "green", "partly": "orange", "does not hold": "red"}.get(verdict, "gray")
    return f"**Verdict:** :{color}-badge[{verdict}]"




def training_status_text(snap) -> str:
    """One line for the progress bar of a :class:`ood_core.jobs.JobSnapshot`."""
    if snap.status == "queued":
        return "Queued: waiting for another training run in this app to finish"
    return (f"Epoch {snap.epoch}/{snap.epochs} · step {snap.step}/{snap.steps} · {snap.phase} · "
            f"{snap.elapsed_s:.1f} s")


def or_error(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None with the error shown when it raises OODCoreError (the
    page goes on)."""
    try:
        return fn(*args, **kwargs)
    except OODCoreError as e:
        st.error(str(e))
        return None


def two_model_page(path: str, version: tuple, prefix: str, fetch, *, prefer: tuple[str, ...], sets, score,
                   x_label, title, rows, file_stem: str):
    """The shared body of the two-model pages (Feature magnitudes, Energy scores): a "Compare
    with" picker (:func:`compare_with`), an OOD-set picker, one histogram of ID vs that set per
    model and a table of every set's rows for both.

    ``fetch(path, version, user_ood)`` gives a model's result, ``sets(result)`` its per-sample
    values ``{"id": ..., set: ...}``, ``score(result)`` the registry score whose metrics
    (:func:`ood_core.app.cached.score_metrics_cached`) feed ``rows(file name, result, metrics)``;
    ``x_label(result)`` and ``title(file name, result)`` label the histograms. Widget keys start
    with ``prefix``. Returns the chosen model's result and the OOD set names.
    """
    other = compare_with(path, prefer, key=f"{prefix}_compare")
    upload = user_ood()
    first = or_stop(fetch, path, version, upload)
    ood_names = [n for n in sets(first) if n != "id"]
    ood_set = url_selectbox("OOD set", ood_names, key=f"{prefix}_set", param="ood")
    all_rows = []
    for side, col, name, result in side_by_side([path, other], fetch, ood_set, sets=sets, user_ood=upload):
        values = sets(result)
        show_figure(distributions_figure({"ID (test)": values["id"], f"OOD: {ood_set}": values[ood_set]},
                                         x_label(result), title(name, result)),
                    f"{prefix}_hist_{side}", f"{file_stem}_{side}", col)
        p = path if side == "left" else other
        metrics = cached.score_metrics_cached(p, checkpoint_version(p), score(result), upload)
        all_rows += rows(name, result, metrics)
    table = pd.DataFrame(all_rows).drop_duplicates(subset=["model", "ood_set"])  # the same file on both sides
    show_table(table, f"{prefix}_table", file_stem)
    return first, ood_names


def threshold_slider(id_scores: np.ndarray, ood_scores: np.ndarray, key: str) -> float:
    """A threshold slider over the range of both score sets, starting at the threshold that
    keeps 95 % of ID (the FPR95 operating point)."""
    both = np.concatenate([id_scores, ood_scores])
    lo, hi = float(np.min(both)), float(np.max(both))
    default = float(np.clip(threshold_at_tpr(id_scores, 0.95), lo, hi))
    return st.slider("Threshold (called ID when score ≥ threshold; starts at the 95%-TPR threshold)",
                     lo, hi if hi > lo else lo + 1e-9, default, key=key, format="%.4f")


def confusion_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, threshold: float) -> dict:
    """Six metrics in a row (TPR, FPR and the four counts) at ``threshold``; returns the counts
    and rates (:func:`ood_core.metrics.confusion_at_threshold`)."""
    conf = confusion_at_threshold(id_scores, ood_scores, threshold)
    m1, m2, m3, m4, m5, m6 = st.columns(6)
    m1.metric("TPR", f"{conf['tpr']:.3f}")
    m2.metric("FPR", f"{conf['fpr']:.3f}")
    m3.metric("ID kept", conf["id_as_id"])
    m4.metric("ID rejected", conf["id_as_ood"])
    m5.metric("OOD accepted", conf["ood_as_id"])
    m6.metric("OOD rejected", conf["ood_as_ood"])
    return conf


def show_mechanism(claim: dict) -> None:
    """The mechanism figure of a claim (baseline left, method right) on the shipped checkpoints,
    when the claim has one."""
    mech = MECHANISMS.get(claim["figure"])
    if mech is None:
        return
    figure = or_stop(cached.claims_mechanisms)["figures"].get(claim["figure"])
    if figure is None:
        return
    st.markdown(f"**Mechanism** (shipped checkpoints). {mech.what}")
    left, right = st.columns(2)
    for role, col in (("baseline", left), ("method", right)):
        show_figure(mechanism_figure(figure, role, mech.x_label), f"mech_{role}", f"{claim['figure']}_{role}", col)


def or_info(fn, *args, prefix: str = ""):
    """``fn(*args)``, or None with the error shown as a note (``prefix: error``) when it raises
    OODCoreError: for optional parts of a page."""
    try:
        return fn(*args)
    except OODCoreError as e:
        st.info(f"{prefix}{e}")
        return None


def sibling_checkpoints(path: str) -> list[str]:
    """The checkpoint files in the folder of ``path`` (the sidebar's list), as strings."""
    return [str(p) for p in list_checkpoints(Path(path).parent)]


def same_dataset_default(options: list[str], path: str) -> list[str]:
    """``path`` and one other of ``options`` trained on the same dataset, its baseline first
    (:func:`~ood_core.checkpoint_store.companion`): the pair the method's paper compares. Two, not
    every match: each model adds its evaluation to the page's first render; more can be added."""
    same = same_dataset_checkpoints(options, path, cached.checkpoint_dataset, limit=len(options))
    if len(same) < 2:
        return same
    return [path, companion(same, path, cached.checkpoint_method)]
