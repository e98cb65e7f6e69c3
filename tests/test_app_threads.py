"""The app's torch thread count: the usable cores minus one by default, $OOD_APP_THREADS to
choose, a clear error (and a sidebar notice) for a bad value."""
from __future__ import annotations

import threading

import pytest
import torch

from ood_core import runtime
from ood_core.errors import OODCoreError


@pytest.mark.parametrize("cores, want", [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_default_leaves_one_core_to_the_browser_and_the_training_job(monkeypatch, cores, want):
    monkeypatch.setattr(runtime, "usable_cpus", lambda: cores)
    assert runtime.app_torch_threads({}) == want
    assert runtime.app_torch_threads({runtime.APP_THREADS_ENV: "  "}) == want  # blank = unset


def test_the_environment_variable_chooses(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 2)
    assert runtime.app_torch_threads({runtime.APP_THREADS_ENV: "4"}) == 4
    assert runtime.app_torch_threads({runtime.APP_THREADS_ENV: " 2 "}) == 2


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_value_is_refused_with_what_to_pass(bad):
    with pytest.raises(OODCoreError, match=r"OOD_APP_THREADS must be a positive integer.*unset it"):
        runtime.app_torch_threads({runtime.APP_THREADS_ENV: bad})


def _in_a_new_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.update(value=fn()))
    t.start()
    t.join()
    return out["value"]


def test_use_app_threads_sets_the_count_later_threads_take():
    from ood_core.app.main import use_app_threads

    before = _in_a_new_thread(torch.get_num_threads)
    try:
        problem = _in_a_new_thread(lambda: use_app_threads({runtime.APP_THREADS_ENV: "1"}))
        assert problem is None
        assert _in_a_new_thread(torch.get_num_threads) == 1  # a script run's thread, started later
        problem = _in_a_new_thread(lambda: use_app_threads({runtime.APP_THREADS_ENV: "many"}))
        assert "OOD_APP_THREADS" in problem and "'many'" in problem
        assert _in_a_new_thread(torch.get_num_threads) == 1  # unchanged by the bad value
    finally:
        _in_a_new_thread(lambda: torch.set_num_threads(before))


def test_a_bad_value_is_said_in_the_sidebar(monkeypatch):
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, TIMEOUT
    from ood_core.app import main

    monkeypatch.setattr(main, "THREADS_PROBLEM", "$OOD_APP_THREADS must be a positive integer, got 'x'")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("OOD_APP_THREADS" in w.value and "torch's default" in w.value for w in at.sidebar.warning)
