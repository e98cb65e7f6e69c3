"""The session-state keys the app shares between its router (main.py), its pages and its
helpers, as named constants, and the few readers of them. Page-local widget keys stay in
their page."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from ..paths import DATA_ROOT_ENV
from ..views import needs_data_root

CHECKPOINT_KEY = "checkpoint"  # the sidebar's checkpoint selectbox: the chosen file's absolute path
TEACHING_KEY = "teaching"  # the sidebar's "Teaching mode" toggle
DATA_ROOT_KEY = "data_root"  # the sidebar's "Data root" text input
USER_OOD_KEY = "user_ood"  # the path of the uploaded OOD set (or absent)
USER_OOD_ERROR_KEY = "user_ood_error"  # why the last upload was refused (shown by the sidebar)
USER_OOD_NONCE_KEY = "user_ood_nonce"  # part of the uploaders' keys: a new value empties them
USER_OOD_KIND_KEY = "user_ood_kind"  # the sidebar's "array file" / "image folder" radio
ONE_INPUT_KEY = "one_input"  # the path of the Embeddings page's uploaded single input (or absent)
ONE_INPUT_ERROR_KEY = "one_input_error"  # why that upload was refused
TRAINING_JOB_KEY = "training_job"  # the Models page's TrainingJob (not a widget: survives page switches)


def chosen_checkpoint() -> str | None:
    """The path of the checkpoint chosen in the sidebar, or None."""
    return st.session_state.get(CHECKPOINT_KEY)


def choose_checkpoint(path: str) -> None:
    """Make ``path`` the sidebar's chosen checkpoint (from a callback: before the rerun)."""
    st.session_state[CHECKPOINT_KEY] = path


def teaching_mode() -> bool:
    """True when the sidebar's "Teaching mode" toggle is on: pages then open their explanation."""
    return bool(st.session_state.get(TEACHING_KEY, False))


def data_root_setting() -> str | None:
    """The data root for real-data checkpoints: the sidebar's "Data root" (``$OOD_DATA_ROOT``
    until it is edited), or None when empty."""
    root = st.session_state.get(DATA_ROOT_KEY, os.environ.get(DATA_ROOT_ENV, ""))
    return str(Path(root.strip()).expanduser()) if root and root.strip() else None


def data_root_for(dataset: str | None) -> str | None:
    """The data root to read ``dataset`` from: :func:`data_root_setting` for a real-data
    preset, None for an embedded dataset (which never reads one)."""
    return data_root_setting() if needs_data_root(dataset) else None


# --------------------------------------------------------------------------- URL state
# A view is shareable: the main controls of each page mirror their value into the URL's query
# string (st.query_params), and opening such a URL sets them again. A value from a URL that is
# not an option here (another folder, a renamed set) falls back to the default with a notice.
URL_NOTICES_KEY = "url_notices"  # notices of this run about stale URL values
_URL_APPLIED_KEY = "url_applied"  # widget keys already set from the URL in this session
_URL_OPENED_KEY = "url_opened"  # {"page": url path, "params": {...}}: the URL the session opened with
_PAGE_KEY = "url_page"  # the url path of the page this run draws


def note_page(url_path: str) -> None:
    """The router, every run, before the page: which page is drawn; on a session's first run
    also the URL it was opened with (only that URL sets widgets, and only on its own page)."""
    st.session_state[_PAGE_KEY] = url_path
    st.session_state.setdefault(_URL_OPENED_KEY, {"page": url_path, "params": {k: st.query_params[k]
                                                                              for k in st.query_params}})


def from_url(key: str, param: str, options: list, to_option=lambda v: v, multi: bool = False,
             every_page: bool = False) -> None:
    """Before the widget ``key`` is drawn: when the session was opened with ``param`` in its URL
    (on this page, or on any page with ``every_page``), set the widget to it once (a list for
    ``multi``: comma-separated in the URL) if every value is one of ``options`` (``to_option``
    maps a URL string to an option), else note the stale value and leave the default. Values
    a page writes into the URL later never set another page's widgets."""
    applied = st.session_state.setdefault(_URL_APPLIED_KEY, set())
    if key in applied:  # only the URL a session opened with; later the widgets write the URL
        return
    applied.add(key)
    opened = st.session_state.get(_URL_OPENED_KEY) or {"page": None, "params": {}}
    if param not in opened["params"] or not (every_page or opened["page"] == st.session_state.get(_PAGE_KEY)):
        return
    raw = opened["params"][param]
    values = [to_option(v) for v in raw.split(",") if v] if multi else [to_option(raw)]
    if values and all(v in options for v in values):
        st.session_state[key] = values if multi else values[0]
    else:
        st.session_state.setdefault(URL_NOTICES_KEY, []).append(
            f"The link's `{param}={raw}` is not available here; showing the default instead.")


def to_url(param: str, value, to_text=str) -> None:
    """After the widget: write its value (a list: comma-separated) into the URL's query string."""
    text = ",".join(to_text(v) for v in value) if isinstance(value, (list, tuple)) else to_text(value)
    if st.query_params.get(param) != text:
        st.query_params[param] = text


def url_notices() -> list[str]:
    """The stale-URL notices collected so far (shown once, then cleared)."""
    return st.session_state.pop(URL_NOTICES_KEY, [])
