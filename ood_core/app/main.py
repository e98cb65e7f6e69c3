"""OOD geometry lab: the Streamlit entrypoint (router + sidebar).

Run with ``ood-lab app`` (installed) or ``streamlit run app.py`` (a checkout: the root
``app.py`` calls :func:`run`). Pages live in ``app_pages/`` beside this file and are
registered here with ``st.navigation`` (not ``pages/``: see :mod:`ood_core.app`).

Checkpoint folder: the sidebar lists the ``*.pt`` files of ``checkpoints/`` in the repository
(``ood-lab app``: in the working directory). Set the environment variable
``OOD_CHECKPOINT_DIR`` (absolute, or relative to the working directory) to list another
folder instead; the tests use it to point the app at checkpoints they train in a temporary
folder::

    OOD_CHECKPOINT_DIR=/path/to/my/checkpoints streamlit run app.py

The chosen checkpoint's absolute path is stored in ``st.session_state[state.CHECKPOINT_KEY]``
(the sidebar selectbox's key); pages read it from there. When the folder holds no
checkpoint, the app says how to train one and the pages show nothing else.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

# absolute imports: Streamlit runs this file as a script (``__main__``), not as a package module
from ood_core.app import cached, state, widgets
from ood_core.app.pages import PAGES, PAGES_DIR
from ood_core.checkpoint_store import CHECKPOINT_ENV, TRAIN_COMMAND, checkpoint_dir, list_checkpoints
from ood_core.data import IMAGE_SUFFIXES
from ood_core.errors import OODCoreError
from ood_core.paths import DATA_ROOT_ENV
from ood_core.runtime import app_torch_threads
from ood_core.views import needs_data_root, preset_status_markdown

# Imported once when the server loads the app, not on the first page that builds a benchmark or
# computes a metric: Home draws neither, so otherwise the first page a visitor opens after it
# paid about 1-1.5 s of scikit-learn imports (the embedded digits, the splits, the ROC metrics,
# and 0.1 s more for the PCA of the Embeddings map).
import sklearn.datasets  # noqa: F401
import sklearn.decomposition  # noqa: F401
import sklearn.metrics  # noqa: F401
import sklearn.model_selection  # noqa: F401

# captum (for attributions) is imported in the background instead: Home does not need it, and
# the 0.7 s it costs would otherwise fall on the first Embeddings page after a server start. The
# photographs of the far-real OOD sets likewise (0.25 s on the first page with a digits model).
cached.preload_attribution_modules()
cached.preload_real_images()


def use_app_threads(environ: dict | None = None) -> str | None:
    """Set torch's thread count to :func:`ood_core.runtime.app_torch_threads` (the calling
    thread's, and the process-wide one that threads started later take: each script run's).
    Returns what is wrong with ``$OOD_APP_THREADS`` (torch's count then stays as it was), else None."""
    try:
        torch.set_num_threads(app_torch_threads(environ))
    except OODCoreError as e:
        return str(e)
    return None


# Once per server process (again on each run where Streamlit runs this file as the script: the
# same number, so nothing changes); a problem is said in the sidebar.
THREADS_PROBLEM = use_app_threads()


def run() -> None:
    """One run of the router: page registry, sidebar, then the chosen page."""
    st.set_page_config(page_title="OOD geometry lab", layout="wide")

    pg = st.navigation([st.Page(PAGES_DIR / p.file, title=p.title, url_path=p.url_path or None,
                                default=not p.url_path) for p in PAGES])  # the default page: served at "/"

    state.note_page(pg.url_path)
    folder = checkpoint_dir()
    options = [str(p) for p in list_checkpoints(folder)]
    if state.chosen_checkpoint() not in options:
        st.session_state.pop(state.CHECKPOINT_KEY, None)  # the file is gone (or the folder changed): the first

    st.sidebar.title("OOD geometry lab")
    if THREADS_PROBLEM:
        st.sidebar.warning(f"{THREADS_PROBLEM}. Using torch's default of {torch.get_num_threads()} threads.")
    st.sidebar.toggle("Teaching mode", key=state.TEACHING_KEY,
                      help="Open every page's explanation (formula and what to look for) by default")
    if options:
        by_name = {Path(p).name: p for p in options}
        state.from_url(state.CHECKPOINT_KEY, "checkpoint", options, to_option=lambda n: by_name.get(n, n),
                       every_page=True)
        st.sidebar.selectbox("Checkpoint", options, key=state.CHECKPOINT_KEY, format_func=lambda p: Path(p).name,
                             help=f"`*.pt` files in `{folder}` (set ${CHECKPOINT_ENV} to list another folder)")
        if state.chosen_checkpoint():
            state.to_url("checkpoint", state.chosen_checkpoint(), to_text=lambda p: Path(p).name)
    else:
        st.info(f"No checkpoint (`*.pt`) in `{folder}`. Train one from the repository root:\n\n"
                f"```\n{TRAIN_COMMAND}\n```\n\nthen reload this page "
                f"(or set `{CHECKPOINT_ENV}` to a folder that holds checkpoints).")

    current = state.chosen_checkpoint()
    chosen_dataset = cached.checkpoint_dataset(current) if current else None
    with st.sidebar.expander("Real datasets",
                             expanded=needs_data_root(chosen_dataset) and not state.data_root_setting()):
        st.session_state.setdefault(state.DATA_ROOT_KEY, state.data_root_setting() or "")  # $OOD_DATA_ROOT at first
        st.text_input("Data root", key=state.DATA_ROOT_KEY, placeholder="/path/to/datasets",
                      help=f"Folder holding CIFAR, SVHN, MNIST, DTD, Places365, VOC... in torchvision's layout "
                           f"(default: ${DATA_ROOT_ENV}). Only read; the app never downloads. Checkpoints trained "
                           "on a real-data preset are evaluated on the files found here; `python -m ood_core list` "
                           "prints the layouts.")
        root = state.data_root_setting()
        if root:
            st.markdown(preset_status_markdown(root))
        elif needs_data_root(chosen_dataset):
            st.warning(f"`{Path(current).name}` was trained on `{chosen_dataset}`: "
                       "set the data root to evaluate it.")

    with st.sidebar.expander("Add your own OOD set", expanded=bool(st.session_state.get(state.USER_OOD_KEY))):
        kind = st.radio("Upload", ["array file", "image folder"], key=state.USER_OOD_KIND_KEY, horizontal=True,
                        help="An (N, H, W[, C]) or (N, C, H, W) .npy/.npz array (uint8, or floats in [0, 1] or "
                             "[0, 255]; (N, 2) points for toy2d), or a folder of images. It is resized and "
                             "converted to the model's input format.")
        nonce = st.session_state.get(state.USER_OOD_NONCE_KEY, 0)  # a new key empties the uploader (forget_upload)
        if kind == "array file":
            st.file_uploader("Array file", type=["npy", "npz"], key=f"user_ood_array_{nonce}",
                             on_change=widgets.store_upload, args=(f"user_ood_array_{nonce}",))
        else:
            st.file_uploader("Image folder", type=sorted(s.lstrip(".") for s in IMAGE_SUFFIXES),
                             accept_multiple_files="directory", key=f"user_ood_images_{nonce}",
                             on_change=widgets.store_upload, args=(f"user_ood_images_{nonce}",))
        if st.session_state.get(state.USER_OOD_ERROR_KEY):
            st.error(st.session_state[state.USER_OOD_ERROR_KEY])
        upload, chosen = st.session_state.get(state.USER_OOD_KEY), state.chosen_checkpoint()
        if upload and chosen:
            try:
                (name, x), = cached.user_ood_set(chosen, cached.checkpoint_version(chosen), upload).items()
                st.success(f"OOD set `{name}`: {x.shape[0]} samples, shown on every page (group `user`).")
            except OODCoreError as e:
                st.error(f"Your OOD set does not fit `{Path(chosen).name}`: {e}")
            st.button("Remove it", key="user_ood_remove", on_click=widgets.forget_upload)

    link = st.sidebar.empty()  # filled after the page: it has then read and written its controls in the URL
    try:
        pg.run()
    finally:
        with link.container():
            widgets.show_url_notices()
            widgets.link_to_view()


if __name__ == "__main__":  # `streamlit run ood_core/app/main.py`, as `ood-lab app` does
    run()
