"""OOD geometry lab: the Streamlit entrypoint (router + sidebar).

Run with ``streamlit run app.py``. Pages live in ``app_pages/`` and are registered here with
``st.navigation``. (Not ``pages/``: Streamlit treats a ``pages/`` folder beside the entrypoint
as legacy auto-discovered pages and then runs a page without this script, so the sidebar
and the chosen checkpoint vanish, in the browser and in AppTest alike.)

Checkpoint folder: the sidebar lists the ``*.pt`` files of ``checkpoints/`` next to this
file. Set the environment variable ``OOD_CHECKPOINT_DIR`` (absolute, or relative to the
working directory) to list another folder instead; the tests use it to point the app at
checkpoints they train in a temporary folder::

    OOD_CHECKPOINT_DIR=/path/to/my/checkpoints streamlit run app.py

The chosen checkpoint's absolute path is stored in ``st.session_state["checkpoint"]``
(the sidebar selectbox's key); pages read it from there. When the folder holds no
checkpoint, the app says how to train one and the pages show nothing else.
"""
from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # make `ood_core` importable whatever the working directory
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402

from ood_core import app_support as sup  # noqa: E402
from ood_core.app_support import CHECKPOINT_ENV, TRAIN_COMMAND, checkpoint_dir, list_checkpoints  # noqa: E402
from ood_core.data import IMAGE_SUFFIXES  # noqa: E402
from ood_core.errors import OODCoreError  # noqa: E402
from ood_core.real_data import DATA_ROOT_ENV  # noqa: E402

st.set_page_config(page_title="OOD geometry lab", layout="wide")

pg = st.navigation([
    st.Page("app_pages/models.py", title="Models", default=True),  # default page: served at "/"
    st.Page("app_pages/jacobian.py", title="Jacobian norms", url_path="jacobian"),
    st.Page("app_pages/collapse.py", title="Neural collapse & subspaces", url_path="collapse"),
    st.Page("app_pages/features.py", title="Feature magnitudes", url_path="features"),
    st.Page("app_pages/energy.py", title="Energy scores", url_path="energy"),
    st.Page("app_pages/roc.py", title="ROC & metrics", url_path="roc"),
    st.Page("app_pages/embeddings.py", title="Embeddings", url_path="embeddings"),
    st.Page("app_pages/compare.py", title="Compare methods", url_path="compare"),
    st.Page("app_pages/claims.py", title="Claims", url_path="claims"),
])

folder = checkpoint_dir(APP_DIR)
options = [str(p) for p in list_checkpoints(folder)]
if st.session_state.get("checkpoint") not in options:
    st.session_state.pop("checkpoint", None)  # the file is gone (or the folder changed): fall back to the first

st.sidebar.title("OOD geometry lab")
st.sidebar.toggle("Teaching mode", key="teaching",
                  help="Open every page's explanation (formula and what to look for) by default")
if options:
    st.sidebar.selectbox("Checkpoint", options, key="checkpoint", format_func=lambda p: Path(p).name,
                         help=f"`*.pt` files in `{folder}` (set ${CHECKPOINT_ENV} to list another folder)")
else:
    st.info(f"No checkpoint (`*.pt`) in `{folder}`. Train one from the repository root:\n\n"
            f"```\n{TRAIN_COMMAND}\n```\n\nthen reload this page "
            f"(or set `{CHECKPOINT_ENV}` to a folder that holds checkpoints).")

current = st.session_state.get("checkpoint")
chosen_dataset = sup.checkpoint_dataset(current) if current else None
with st.sidebar.expander("Real datasets", expanded=sup.needs_data_root(chosen_dataset) and not sup.data_root_setting()):
    st.session_state.setdefault(sup.DATA_ROOT_KEY, sup.data_root_setting() or "")  # $OOD_DATA_ROOT at first
    st.text_input("Data root", key=sup.DATA_ROOT_KEY, placeholder="/path/to/datasets",
                  help=f"Folder holding CIFAR, SVHN, MNIST, DTD, Places365, VOC... in torchvision's layout "
                       f"(default: ${DATA_ROOT_ENV}). Only read; the app never downloads. Checkpoints trained on "
                       "a real-data preset are evaluated on the files found here; `python -m ood_core list` "
                       "prints the layouts.")
    root = sup.data_root_setting()
    if root:
        st.markdown(sup.preset_status_markdown(root))
    elif sup.needs_data_root(chosen_dataset):
        st.warning(f"`{Path(current).name}` was trained on `{chosen_dataset}`: "
                   "set the data root to evaluate it.")

with st.sidebar.expander("Add your own OOD set", expanded=bool(st.session_state.get(sup.USER_OOD_KEY))):
    kind = st.radio("Upload", ["array file", "image folder"], key="user_ood_kind", horizontal=True,
                    help="An (N, H, W[, C]) or (N, C, H, W) .npy/.npz array (uint8, or floats in [0, 1] or "
                         "[0, 255]; (N, 2) points for toy2d), or a folder of images. It is resized and "
                         "converted to the model's input format.")
    nonce = st.session_state.get("user_ood_nonce", 0)  # a new key empties the uploader (see forget_upload)
    if kind == "array file":
        st.file_uploader("Array file", type=["npy", "npz"], key=f"user_ood_array_{nonce}",
                         on_change=sup.store_upload, args=(f"user_ood_array_{nonce}",))
    else:
        st.file_uploader("Image folder", type=sorted(s.lstrip(".") for s in IMAGE_SUFFIXES),
                         accept_multiple_files="directory", key=f"user_ood_images_{nonce}",
                         on_change=sup.store_upload, args=(f"user_ood_images_{nonce}",))
    if st.session_state.get("user_ood_error"):
        st.error(st.session_state["user_ood_error"])
    upload, chosen = st.session_state.get(sup.USER_OOD_KEY), st.session_state.get("checkpoint")
    if upload and chosen:
        try:
            (name, x), = sup.user_ood_set(chosen, sup.checkpoint_version(chosen), upload).items()
            st.success(f"OOD set `{name}`: {x.shape[0]} samples, shown on every page (group `user`).")
        except OODCoreError as e:
            st.error(f"Your OOD set does not fit `{Path(chosen).name}`: {e}")
        st.button("Remove it", key="user_ood_remove", on_click=sup.forget_upload)

pg.run()
