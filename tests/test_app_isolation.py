"""Issue 7 at the AppTest level: sessions do not see each other's state, cached results are
keyed on the file's content (not its mtime), and the app writes only into its checkpoint and
cache folders, whatever names the user types or uploads.

Two ``AppTest`` instances in one process share Streamlit's process-wide caches
(``st.cache_data`` / ``st.cache_resource``) and the module-level stores of ``ood_core.app.cached``
and ``ood_core.checkpoint_store``,
exactly like two browser sessions of one server; each has its own ``session_state``.
AppTest does not fire ``st.fragment(run_every=...)`` timers, so the tests wait for a job and
rerun themselves. The browser version of the two-session test is ``test_e2e_sessions.py``.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import ood_core
from apptest_helpers import (APP, LOADED_TAB, TIMEOUT, as_shown, evaluation_of, models_tab, on_page,
                             shown_tables)
from ood_core.app import cached, state
from ood_core import checkpoint_store, uploads

pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")

ROOT = Path(__file__).resolve().parents[1]
JOB_WAIT_S = 120


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _aurocs(rows) -> dict:
    """{(ood_set, score): auroc} of a metric table (list of row dicts or a DataFrame)."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    return {(r["ood_set"], r["score"]): float(r["auroc"]) for r in rows}


def _assert_same_table(shown, expected_rows, where: str) -> None:
    got, want = _aurocs(shown), _aurocs(expected_rows)
    assert got.keys() == want.keys(), where
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), f"{where}: {k} shows {got[k]}, the model has {want[k]}"


@pytest.fixture(scope="module")
def two_digits_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two ``ce`` models on digits (same OOD sets and scores, different numbers): a mix-up
    between them cannot be caught by the table's shape, only by its values."""
    folder = tmp_path_factory.mktemp("two-models")
    paths = []
    for seed in (0, 1):
        r = ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=1, seed=seed), evaluate_after=False)
        paths.append(ood_core.save_checkpoint(folder / f"seed{seed}.pt", r.model, r.meta))
    return paths[0], paths[1]


@pytest.fixture
def pair_dir(two_digits_models, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A listed folder with the two models as ``a.pt`` and ``b.pt``, given the same mtime."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    a, b = folder / "a.pt", folder / "b.pt"
    shutil.copy(two_digits_models[0], a)
    shutil.copy(two_digits_models[1], b)
    same = os.stat(a).st_mtime_ns
    os.utime(b, ns=(same, same))
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(folder))
    return a, b


def _new_app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _start_toy2d(at, out_name: str, epochs: int, slow_motion: float):
    """Start a toy2d run from the Models page's training form of ``at``; return its job."""
    _ok(models_tab(at))
    at.text_input(key="train_out_name").set_value(out_name)
    at.number_input(key="train_epochs").set_value(epochs)
    at.slider(key="train_slow_motion").set_value(slow_motion)
    _ok(at.run())
    _ok(at.button(key="train_start").click().run())
    return at.session_state[state.TRAINING_JOB_KEY]


# --------------------------------------------------------------------------- 1. two sessions
def test_two_sessions_with_different_checkpoints_each_see_their_own_model(pair_dir):
    a, b = pair_dir
    want_a, want_b = evaluation_of(a)["table"], evaluation_of(b)["table"]
    assert _aurocs(want_a) != _aurocs(want_b)  # otherwise a mix-up would go unnoticed

    at_a, at_b = _new_app(), _new_app()
    _ok(on_page(at_a))
    _ok(on_page(at_b))
    at_b.selectbox(key="checkpoint").set_value(str(b))
    _ok(at_b.run())
    assert at_a.session_state[state.CHECKPOINT_KEY] == str(a) and at_b.session_state[state.CHECKPOINT_KEY] == str(b)
    # interleaved runs on the Models page, then on ROC & metrics: each shows its own model
    for step in range(2):
        _ok(at_a.run())
        _assert_same_table(at_a.dataframe[0].value, want_a, f"session A, run {step}")
        _ok(at_b.run())
        _assert_same_table(at_b.dataframe[0].value, want_b, f"session B, run {step}")
    _ok(at_b.switch_page("ood_core/app/app_pages/roc.py").run())
    _ok(at_a.switch_page("ood_core/app/app_pages/roc.py").run())
    _ok(at_b.run())
    assert at_a.session_state[state.CHECKPOINT_KEY] == str(a) and at_b.session_state[state.CHECKPOINT_KEY] == str(b)
    # the ROC page's table is filtered to the chosen scores and sets: compare those rows
    for at, want, who in ((at_a, want_a, "A"), (at_b, want_b, "B")):
        shown = _aurocs(shown_tables(at)[0])
        expected = _aurocs(want)
        assert shown and all(shown[k] == as_shown(expected[k]) for k in shown), who


def test_a_training_job_belongs_to_the_session_that_started_it(pair_dir, tmp_path):
    a, b = pair_dir
    folder = a.parent
    want_b = evaluation_of(b)["table"]
    at_a, at_b = _new_app(), _new_app()
    _ok(on_page(at_a))
    _ok(on_page(at_b))
    at_b.selectbox(key="checkpoint").set_value(str(b))
    _ok(at_b.run())
    # session A starts a toy2d run, slowed down so that it is still running below
    job = _start_toy2d(at_a, "a_run.pt", epochs=6, slow_motion=1.5)
    assert not job.finished
    # while it runs, B works on its own model and never sees A's job
    _ok(models_tab(at_b))  # B's training tab: the form, no job panel
    assert state.TRAINING_JOB_KEY not in at_b.session_state
    assert [x for x in at_b.button if x.key == "train_start"]
    assert not [x for x in at_b.button if x.key == "train_cancel"]  # no Cancel: B has no job panel
    assert not [s for s in at_b.subheader if s.value.startswith("Run:")]
    assert not [p for p in at_b.get("progress")]
    _ok(models_tab(at_b, LOADED_TAB))
    _assert_same_table(at_b.dataframe[0].value, want_b, "session B during A's run")
    _ok(at_b.switch_page("ood_core/app/app_pages/roc.py").run())
    assert at_b.session_state[state.CHECKPOINT_KEY] == str(b)
    assert not job.finished, "the run ended too early for this test to mean anything"
    # A's run finishes and saves; A keeps its checkpoint, B keeps its own and still has no job
    assert job.wait(JOB_WAIT_S)
    for _ in range(3):
        _ok(at_a.run())
        if at_a.session_state["training_job_announced"] == job.job_id:
            break
    assert job.status == "done" and (folder / "a_run.pt").is_file()
    assert any("Training finished" in s.value for s in at_a.success)
    assert at_a.session_state[state.CHECKPOINT_KEY] == str(a)
    _ok(at_b.run())
    assert at_b.session_state[state.CHECKPOINT_KEY] == str(b) and state.TRAINING_JOB_KEY not in at_b.session_state
    assert "a_run.pt" in at_b.selectbox(key="checkpoint").options  # a shared folder, listed to both


# --------------------------------------------------------------------------- 2. cache keys
def _replace_in_place_keeping_mtime(target: Path, source: Path) -> None:
    """Overwrite ``target``'s bytes with ``source``'s in place (same inode) and put its old
    atime/mtime back to the nanosecond, as ``cp -p`` or a coarse-mtime file system would."""
    before = os.stat(target)
    with open(target, "r+b") as f:
        f.write(source.read_bytes())
        f.truncate()
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_checkpoint_replaced_with_the_same_mtime_is_not_served_stale(pair_dir, tmp_path):
    a, b = pair_dir
    want_a, want_b = evaluation_of(a)["table"], evaluation_of(b)["table"]
    path = a.parent / "m.pt"
    shutil.copy(a, path)
    at = _new_app()
    at.session_state[state.CHECKPOINT_KEY] = str(path)
    _ok(on_page(at))
    _assert_same_table(at.dataframe[0].value, want_a, "before the replacement")
    ev_before = cached.evaluation_cached(str(path), cached.checkpoint_version(str(path)))

    _replace_in_place_keeping_mtime(path, b)
    _ok(at.run())
    _assert_same_table(at.dataframe[0].value, want_b, "after the replacement (same inode, same mtime)")
    ev_after = cached.evaluation_cached(str(path), cached.checkpoint_version(str(path)))
    _assert_same_table(ev_after["table"], want_b, "evaluation_cached after the replacement")
    assert _aurocs(ev_before["table"]) != _aurocs(ev_after["table"])
    # and the other pages' caches follow too (ROC page reads evaluation_cached, Features its own)
    _ok(at.switch_page("ood_core/app/app_pages/roc.py").run())
    shown = _aurocs(shown_tables(at)[0])
    assert shown and all(shown[k] == as_shown(_aurocs(want_b)[k]) for k in shown)


def test_file_version_is_memoised_but_sees_every_rewrite(tmp_path, monkeypatch):
    p = tmp_path / "f.pt"
    p.write_bytes(b"x" * 1000)
    monkeypatch.setattr(checkpoint_store, "_RACY_WINDOW_NS", -10**18)  # memoise even a file changed a moment ago
    monkeypatch.setattr(checkpoint_store, "_DIGESTS", {})
    v1 = checkpoint_store.file_version(p)
    assert checkpoint_store._DIGESTS[str(p)][1] == v1
    reads = []
    from ood_core import checkpoint as checkpoint_module

    real_open = checkpoint_module.open_checkpoint_file  # file_version opens through it (regular files only)
    monkeypatch.setattr(checkpoint_module, "open_checkpoint_file", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    assert checkpoint_store.file_version(p) == v1 and reads == []  # unchanged file: not read again
    time.sleep(0.05)  # past the coarse timestamp clock's tick, so the ctime moves
    before = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"y")  # same size, same inode
    os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime
    v2 = checkpoint_store.file_version(p)
    assert v2 != v1 and len(reads) == 1


def test_a_just_changed_file_is_hashed_every_time(tmp_path):
    """Within one tick of the coarse timestamp clock an in-place rewrite can keep every stat
    field: a file changed in the last seconds is therefore never memoised."""
    p = tmp_path / "f.pt"
    p.write_bytes(b"a" * 100)
    v1 = checkpoint_store.file_version(p)
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"b")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert checkpoint_store.file_version(p) != v1


def test_every_cached_function_is_keyed_on_the_checkpoint_content():
    """Every cached wrapper that takes a checkpoint ``path`` also takes ``version`` (the content
    digest): a new cached function that forgets it fails here."""
    import inspect

    from streamlit.runtime.caching.cache_utils import CachedFunc

    wrappers = {name: f for name, f in vars(cached).items() if isinstance(f, CachedFunc)}
    assert len(wrappers) >= 15, sorted(wrappers)
    for name, f in wrappers.items():
        params = list(inspect.signature(f._info.func).parameters)
        if "path" in params:
            assert params[:2] == ["path", "version"] or params[:2] == ["path", "digest"], name
    assert cached.checkpoint_version(str(ROOT / "checkpoints" / "ce_toy2d.pt"))[0] == \
        checkpoint_store.file_version(ROOT / "checkpoints" / "ce_toy2d.pt")


# --------------------------------------------------------------------------- 3. where the app writes
class _WriteRecorder:
    """Every file-system write of this process seen through audit hooks (open for writing,
    mkdir, rename/replace, link, symlink, remove, rmdir, truncate, utime), while ``active``.
    Audit hooks cannot be removed, so one recorder is installed once and switched on/off."""

    _instance = None

    def __init__(self):
        self.active = False
        self.paths: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        sys.addaudithook(self._hook)

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _record(self, event, path):
        if isinstance(path, int) or path is None:
            return
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        try:
            full = os.path.abspath(os.fspath(path))
        except (TypeError, ValueError):
            full = repr(path)
        with self.lock:
            self.paths.append((event, full))

    def _hook(self, event, args):
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writes:
                self._record(event, path)
        elif event in ("os.rename", "os.link", "os.symlink"):
            self._record(event, args[0] if event != "os.symlink" else None)
            self._record(event, args[1])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.utime", "shutil.rmtree"):
            self._record(event, args[0])


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_mtime_ns for p in folder.rglob("*")}


def _inside(path: str, folder: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def test_the_app_writes_only_into_its_checkpoint_and_cache_folders(ckpt_dir, tmp_path, monkeypatch,
                                                                    tmp_path_factory):
    home, cwd, ckpts, cache = (tmp_path / n for n in ("home", "cwd", "ckpts", "cache"))
    for d in (home, cwd, ckpts):
        d.mkdir()
    shutil.copy(ckpt_dir / "ce_digits.pt", ckpts / "ce_digits.pt")
    shutil.copy(ckpt_dir / "ce_toy2d.pt", ckpts / "ce_toy2d.pt")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(ckpts))
    monkeypatch.setenv("OOD_CACHE_DIR", str(cache))
    shipped = ROOT / "checkpoints"
    before = {"home": _tree(home), "cwd": _tree(cwd), "shipped": _tree(shipped)}
    recorder = _WriteRecorder.get()
    with recorder.lock:
        recorder.paths.clear()
    recorder.active = True
    try:
        at = _new_app()
        _ok(on_page(at))
        # a user OOD set through the sidebar's uploader (a crafted name: only its last part is used)
        rng = np.random.default_rng(0)
        import io
        buf = io.BytesIO()
        np.save(buf, rng.integers(0, 256, (20, 8, 8), dtype=np.uint8))
        at.file_uploader(key="user_ood_array_0").set_value(("../../../../escape.npy", buf.getvalue(),
                                                            "application/octet-stream"))
        _ok(at.run())
        upload = Path(at.session_state[state.USER_OOD_KEY])
        assert _inside(str(upload), cache) and upload.name == "escape.npy"
        assert any("escape" in s.value for s in at.sidebar.success)
        # every page
        for page in sorted((ROOT / "ood_core" / "app" / "app_pages").glob("*.py")):
            _ok(at.switch_page(f"ood_core/app/app_pages/{page.name}").run())
        # a toy2d run from the Models page
        _ok(at.switch_page("ood_core/app/app_pages/models.py").run())
        job = _start_toy2d(at, "fs_run.pt", epochs=2, slow_motion=0.0)
        assert job.wait(JOB_WAIT_S) and job.status == "done", job.snapshot().message
        _ok(at.run())
        fut = cached._background_work()[0].submit(lambda: None)  # let a background map fit finish
        fut.result(timeout=120)
    finally:
        recorder.active = False
    assert (ckpts / "fs_run.pt").is_file()
    # HOME, the working directory and the shipped checkpoints did not change at all
    assert _tree(home) == before["home"]
    assert _tree(cwd) == before["cwd"]
    assert _tree(shipped) == before["shipped"]
    # every write of the process went to the checkpoint or the cache folder (bytecode caches
    # are Python's own; other tests' temporary folders may still be written by their threads)
    others = tmp_path_factory.getbasetemp()
    with recorder.lock:
        writes = list(recorder.paths)
    assert writes, "the audit hook saw no write at all"
    stray = [(e, p) for e, p in writes
             if not (_inside(p, ckpts) or _inside(p, cache))
             and not (p.endswith(".pyc") and "__pycache__" in p)
             and not p.startswith("/dev/")
             and not (_inside(p, others) and not _inside(p, tmp_path))]
    assert not stray, stray
    assert any(_inside(p, ckpts) for _, p in writes) and any(_inside(p, cache) for _, p in writes)


# --------------------------------------------------------------------------- 3b. hostile names
@pytest.mark.parametrize("dangling", [False, True])
def test_an_output_name_that_is_a_symlink_out_of_the_folder_is_refused(own_dir, tmp_path, dangling):
    outside = tmp_path / "outside" / "victim.pt"
    outside.parent.mkdir()
    if not dangling:
        outside.write_bytes(b"precious")
    (own_dir / "link.pt").symlink_to(outside)
    at = _new_app()
    _ok(models_tab(on_page(at)))
    at.text_input(key="train_out_name").set_value("link.pt")
    _ok(at.run())
    assert any("symbolic link" in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.button(key="train_start").disabled
    assert not [c for c in at.checkbox if c.key == "train_overwrite"]  # no way to tick past it
    assert (outside.read_bytes() == b"precious") if not dangling else not outside.exists()


def test_uploaded_file_names_cannot_leave_the_cache_folder(own_dir, tmp_path):
    cache = tmp_path / "cache"
    rng = np.random.default_rng(0)
    import io

    def npy(seed):
        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(seed).random((10, 2), dtype=np.float32))
        return buf.getvalue()

    at = _new_app()
    at.session_state[state.CHECKPOINT_KEY] = str(own_dir / "ce_toy2d.pt")
    _ok(at.run())
    names = ["../../../../evil1.npy", str(tmp_path / "abs_evil.npy"), "..\\..\\win_evil.npy",
             "sub/dir/evil4.npy"]
    for i, name in enumerate(names):
        at.file_uploader(key="user_ood_array_0").set_value((name, npy(i), "application/octet-stream"))
        _ok(at.run())
        stored = Path(at.session_state[state.USER_OOD_KEY])
        assert _inside(str(stored), cache / "uploads"), (name, stored)
        assert "/" not in stored.name and ".." not in stored.parent.name
    assert not (tmp_path / "abs_evil.npy").exists()
    assert not list(tmp_path.parent.glob("evil1.npy")) and not list(Path("/").glob("evil1.npy"))
    # control characters (a newline; Streamlit itself refuses a NUL): a message in the sidebar, no exception
    at.file_uploader(key="user_ood_array_0").set_value(("bad\nname.npy", npy(9), "application/octet-stream"))
    _ok(at.run())
    assert any("control characters" in e.value for e in at.sidebar.error), [e.value for e in at.sidebar.error]
    assert state.USER_OOD_KEY not in at.session_state
    del rng


@pytest.mark.parametrize("name", ["bad\x00name.npy", "x" * 300 + ".npy", "..", "/", ""])
def test_save_upload_refuses_unusable_names_with_a_data_error(tmp_path, name):
    class Upload:
        def __init__(self, name):
            self.name = name

        def getvalue(self):
            return b"\x93NUMPY"

    with pytest.raises(ood_core.errors.DataError):
        uploads.save_upload([Upload(name)], tmp_path / "uploads")
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").rglob("*.npy"))
