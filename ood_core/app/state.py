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
