"""Files are checked before they are trusted: damaged checkpoints, bad feature-cache entries and
metadata that does not fit the weights are refused (or, for the cache, replaced), never used.

* A checkpoint whose bytes changed after it was written (its zip archive's CRC-32 no longer
  matches) is refused with one line naming the file and the damaged member, by the library, the
  CLI (exit 2), ``manifest`` and the app. ``torch.load`` alone accepts such a file: the tests
  assert that too, to show what the check adds.
* A feature-cache entry is served only if every array has exactly the shape, dtype and size this
  model gives on this set; anything else is recomputed and rewritten, and an entry declaring GBs
  (a zip bomb) is refused from its headers, without being unpacked (peak memory measured in a
  subprocess).
* A model spec whose sizes are not those of the stored weights is refused before the model is
  built (a ``feature_dim = 10**6`` spec would allocate GBs), and a dataset in the metadata that
  does not fit the model is refused where the benchmark is rebuilt.
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import ood_core
from ood_core import checkpoint as C
from ood_core.cli import main
from ood_core.errors import CheckpointError, OODCoreError
from ood_core.feature_cache import FeatureCache, data_fingerprint, model_fingerprint

from conftest import CHECKPOINTS, ROOT

E = importlib.import_module("ood_core.evaluate")  # the module (ood_core.evaluate is also a function)
DIGITS = CHECKPOINTS / "ce_digits.pt"
MEMORY_LIMIT_KB = 1_500_000  # peak RSS bound of the subprocess tests (importing torch alone takes ~0.5 GB)


# --------------------------------------------------------------------------- helpers
def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where the bytes of zip member ``info`` start in ``path`` (after its local header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _record_of(path: Path, tensor: str) -> zipfile.ZipInfo:
    """The zip member of checkpoint ``path`` that stores the bytes of state-dict tensor ``tensor``."""
    want = torch.load(path, weights_only=True)["state_dict"][tensor].numpy().tobytes()
    with zipfile.ZipFile(path) as z:
        (info,) = [i for i in z.infolist() if "/data/" in i.filename and z.read(i) == want]
    return info


def _overwrite(path: Path, offset: int, count: int) -> None:
    """Invert ``count`` bytes of ``path`` at ``offset`` (so they certainly change)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


@pytest.fixture
def damaged(tmp_path) -> Path:
    """A copy of ce_digits.pt with 512 bytes overwritten inside the record of ``head.weight``."""
    path = tmp_path / "damaged.pt"
    shutil.copy(DIGITS, path)
    info = _record_of(path, "head.weight")
    assert info.file_size >= 2048
    _overwrite(path, _data_offset(path, info) + 1024, 512)
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _run_measured(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh Python (this checkout first on the path); it prints one JSON line
    last, to which the peak RSS of the process (KB) is added as ``peak_kb``."""
    script = textwrap.dedent(code) + textwrap.dedent("""
        import json as _json, resource as _resource
        RESULT["peak_kb"] = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
        print(_json.dumps(RESULT))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OOD_CACHE_DIR": str(tmp_path / "cache")}
    from test_reliability_memory import fresh_python  # a forked python: its own ru_maxrss, not pytest's peak

    proc = subprocess.run(fresh_python("-c", script), capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)  # shown with -s
    return result


# --------------------------------------------------------------------------- 1. damaged checkpoints
def test_a_damaged_tensor_record_is_refused_though_torch_load_accepts_it(damaged):
    # the gap: torch.load does not check the CRCs and returns the damaged weights
    raw = torch.load(damaged, weights_only=True)
    good = torch.load(DIGITS, weights_only=True)
    assert not torch.equal(raw["state_dict"]["head.weight"], good["state_dict"]["head.weight"])
    with zipfile.ZipFile(damaged) as z:
        assert z.testzip() == _record_of(DIGITS, "head.weight").filename  # the archive knows

    member = _record_of(DIGITS, "head.weight").filename
    for load in (C.read_checkpoint, C.load_checkpoint, C.manifest_entry,
                 lambda p: C.read_checkpoint(Path(p).read_bytes())):
        with pytest.raises(CheckpointError) as info:
            load(damaged)
        msg = str(info.value)
        assert "\n" not in msg
        assert "damaged" in msg and member in msg and "head.weight" in msg, msg
    assert str(damaged) in str(pytest.raises(CheckpointError, C.load_checkpoint, damaged).value)


def test_the_cli_and_manifest_refuse_a_damaged_checkpoint_with_exit_2(damaged, capsys):
    assert main(["evaluate", "--checkpoint", str(damaged), "--no-cache", "--device", "cpu"]) == 2
    err = _one_error_line(capsys)
    assert str(damaged) in err and "damaged" in err and "head.weight" in err
    assert main(["manifest", str(damaged.parent)]) == 2
    assert "damaged.pt" in _one_error_line(capsys)
    assert not (damaged.parent / "manifest.json").exists()


def test_a_changed_byte_in_any_member_is_refused_and_intact_files_load(tmp_path):
    with zipfile.ZipFile(DIGITS) as z:
        infos = [i for i in z.infolist() if i.file_size]
    assert len(infos) > 10
    for info in infos:  # the pickle, the version records and every tensor record
        path = tmp_path / "one-byte.pt"
        shutil.copy(DIGITS, path)
        _overwrite(path, _data_offset(path, info) + info.file_size // 2, 1)
        with pytest.raises(CheckpointError, match="damaged") as err:
            C.read_checkpoint(path)
        assert info.filename in str(err.value)
    for path in sorted(CHECKPOINTS.glob("*.pt")):  # every shipped checkpoint (written before the check) loads
        model, meta = C.load_checkpoint(path)
        assert meta["model"]["arch"] and not model.training


def test_damaged_imported_weights_are_refused(tmp_path):
    from ood_core.adapters import _read_state_dict

    path = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.randn(64, 64), "fc.bias": torch.randn(64)}, path)
    assert set(_read_state_dict(path)) == {"fc.weight", "fc.bias"}
    with zipfile.ZipFile(path) as z:
        (info,) = [i for i in z.infolist() if i.file_size == 64 * 64 * 4]
    _overwrite(path, _data_offset(path, info) + 100, 8)
    torch.load(path, weights_only=True)  # accepted by torch
    with pytest.raises(OODCoreError, match=f"damaged: archive member {info.filename}"):
        _read_state_dict(path)


def test_the_app_shows_a_damaged_checkpoint_as_one_error(damaged, monkeypatch, clear_streamlit_caches):
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, TIMEOUT, on_page, shown_tables
    from ood_core import checkpoint_store

    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(damaged.parent))
    at = on_page(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "damaged" in at.error[0].value and "damaged.pt" in at.error[0].value
    assert not shown_tables(at) and not at.get("plotly_chart") and not at.get("vega_lite_chart")


# --------------------------------------------------------------------------- 2. feature-cache entries
@pytest.fixture(scope="module")
def digits():
    model, _ = ood_core.load_checkpoint(DIGITS)
    bench = ood_core.load_benchmark("digits")
    bench = dataclasses.replace(bench, ood={"blobs": bench.ood["blobs"]}, ood_groups={"blobs": "far-synthetic"})
    return model, bench


SCORES = ["msp", "mahalanobis"]  # mahalanobis is fitted on the training features


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _write_zip(path: Path, members: dict[str, bytes], compress: bool = False) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _corrupt(path: Path, kind: str) -> None:
    with np.load(path) as f:
        feats, logits = f["features"], f["logits"]
    n, d = feats.shape
    if kind == "logits width":  # one column too many, always the largest: accuracy would be ~0
        np.savez(path, features=feats, logits=np.concatenate([logits, logits.max(1, keepdims=True) + 10], 1))
    elif kind == "fewer logits":
        np.savez(path, features=feats, logits=logits[:, :-1])
    elif kind == "feature width":
        np.savez(path, features=feats[:, : d // 2], logits=logits)
    elif kind == "1-D logits":
        np.savez(path, features=feats, logits=logits.reshape(-1))
    elif kind == "float64":
        np.savez(path, features=feats.astype(np.float64), logits=logits.astype(np.float64))
    elif kind == "float16":
        np.savez(path, features=feats.astype(np.float16), logits=logits.astype(np.float16))
    elif kind == "int32":
        np.savez(path, features=feats.astype(np.int32), logits=logits.astype(np.int32))
    elif kind == "big-endian":
        np.savez(path, features=feats.astype(">f4"), logits=logits.astype(">f4"))
    elif kind == "fortran order":
        np.savez(path, features=np.asfortranarray(feats), logits=np.asfortranarray(logits))
    elif kind == "truncated file":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated member":  # a whole zip, but features.npy stops halfway through its data
        data = _npy(feats)
        _write_zip(path, {"features.npy": data[: len(data) // 2], "logits.npy": _npy(logits)})
    elif kind == "changed byte":  # shapes and dtypes right, one value's bytes changed: the CRC tells
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("features.npy")
        _overwrite(path, _data_offset(path, info) + info.file_size - 7, 1)
    elif kind == "declared size far above":  # a small file that unpacks to 16x the entry's size
        _write_zip(path, {"features.npy": _npy(np.zeros((n, 16 * d), np.float32)), "logits.npy": _npy(logits)},
                   compress=True)
    elif kind == "compressed":
        _write_zip(path, {"features.npy": _npy(feats), "logits.npy": _npy(logits)}, compress=True)
    elif kind == "extra member":
        np.savez(path, features=feats, logits=logits, more=np.zeros(3, np.float32))
    else:
        raise AssertionError(kind)


KINDS = ["logits width", "fewer logits", "feature width", "1-D logits", "float64", "float16", "int32", "big-endian",
         "fortran order", "truncated file", "truncated member", "changed byte", "declared size far above",
         "compressed", "extra member"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_cache_entry_is_never_served_and_is_rewritten(tmp_path, digits, kind, caplog):
    model, bench = digits
    reference = E.evaluate(model, bench, score_names=SCORES)  # no cache
    cache = FeatureCache(tmp_path / "features")
    E.evaluate(model, bench, score_names=SCORES, cache=cache)  # fills id, train and blobs
    inputs = {"id": bench.test.x, "train": bench.train.x, "blobs": bench.ood["blobs"]}
    key = model_fingerprint(model)
    paths = {s: cache.path(key, s, data_fingerprint(x)) for s, x in inputs.items()}
    assert all(p.is_file() for p in paths.values())
    corrupted = {}
    for s, p in paths.items():
        _corrupt(p, kind)
        corrupted[s] = p.read_bytes()

    with caplog.at_level(logging.WARNING, logger="ood_core.feature_cache"):
        again = E.evaluate(model, bench, score_names=SCORES, cache=cache)
    assert again.report == reference.report  # the numbers of a run without the cache
    for s in inputs:
        assert torch.equal(again.outputs[s].logits, reference.outputs[s].logits)
    assert caplog.text.count("ignoring") == 3, caplog.text
    for s in inputs:  # each bad entry was replaced by a good one
        assert paths[s].read_bytes() != corrupted[s]
        with np.load(paths[s]) as f:
            assert np.array_equal(f["features"], reference.outputs[s].features.numpy())
            assert np.array_equal(f["logits"], reference.outputs[s].logits.numpy())


def test_good_entries_are_served_and_widths_come_from_the_head(tmp_path, digits):
    model, bench = digits
    cache = FeatureCache(tmp_path)
    E.extract_benchmark_outputs(model, bench, sets=["id"], cache=cache)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = E.extract_benchmark_outputs(model, bench, sets=["id"], cache=cache)
    finally:
        handle.remove()
    assert calls == []  # a lab model's widths are read from its head: a hit runs no forward pass
    assert out["id"].features.shape == (bench.test.x.shape[0], 128) and out["id"].logits.shape[1] == 6
    assert E.output_widths(model, bench.test.x) == (128, 6)
    key, data_key, n = model_fingerprint(model), data_fingerprint(bench.test.x), bench.test.x.shape[0]
    assert cache.load(key, "id", data_key, n, widths=(128, 6)) is not None
    assert cache.load(key, "id", data_key, n, widths=(128, 7)) is None  # another model's width: not served

    class Wrapped(torch.nn.Module):  # not a lab model: the widths come from one forward pass
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            out = self.inner(x)
            return type(out)(out.features[:, :100], out.logits)

    assert E.output_widths(Wrapped(), bench.test.x) == (100, 6)


def test_a_zip_bomb_cache_entry_is_refused_without_unpacking_it(tmp_path):
    result = _run_measured(f"""
        import io, logging, zipfile
        import numpy as np
        import ood_core
        from ood_core.evaluate import extract_benchmark_outputs
        from ood_core.feature_cache import FeatureCache, data_fingerprint, model_fingerprint

        model, _ = ood_core.load_checkpoint({str(DIGITS)!r})
        bench = ood_core.load_benchmark("digits")
        x = bench.test.x
        n = x.shape[0]
        cache = FeatureCache({str(tmp_path / "features")!r})
        path = cache.path(model_fingerprint(model), "id", data_fingerprint(x))
        path.parent.mkdir(parents=True)
        cols = int(2.4e9 / 4 / n)  # 2.4 GB of float32 zeros, written (and deflated) 16 MB at a time
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {{"descr": "<f4", "fortran_order": False, "shape": (n, cols)}})
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            with z.open("features.npy", "w", force_zip64=True) as f:
                f.write(header.getvalue())
                zeros, left = bytes(16 << 20), n * cols * 4
                while left > 0:
                    f.write(zeros[:left])
                    left -= len(zeros)
            buf = io.BytesIO()
            np.save(buf, np.zeros((n, 6), np.float32))
            z.writestr("logits.npy", buf.getvalue())
        size = path.stat().st_size
        logging.basicConfig(level=logging.WARNING)
        out = extract_benchmark_outputs(model, bench, sets=["id"], cache=cache)
        RESULT = {{"file_mb": size / 1e6, "features": list(out["id"].features.shape),
                   "rewritten_mb": path.stat().st_size / 1e6}}
    """, tmp_path)
    assert result["file_mb"] < 20  # a small file ...
    assert result["features"] == [217, 128]  # ... not served: recomputed
    assert result["rewritten_mb"] < 1  # and replaced by the real entry
    assert result["peak_kb"] < MEMORY_LIMIT_KB, result  # never unpacked (it would take 2.4 GB)


# --------------------------------------------------------------------------- 3. metadata that does not fit
def _with_meta(tmp_path: Path, name: str, change, source: Path = DIGITS) -> Path:
    raw = torch.load(source, weights_only=True)
    change(raw["meta"])
    path = tmp_path / name
    torch.save(raw, path)
    return path


SPEC_CASES = {
    "num_classes": ({"num_classes": 7}, "num_classes=7"),
    "feature_dim": ({"feature_dim": 1_000_000}, "feature_dim=1000000"),
    "input channels": ({"input_shape": [3, 8, 8]}, "input_shape[0]=3"),
    "input dims": ({"input_shape": [64]}, "does not suit the smallcnn"),
    "string size": ({"num_classes": "6"}, "positive integer"),
    "negative size": ({"num_classes": -6}, "positive integer"),
    "zero feature_dim": ({"feature_dim": 0}, "positive integer"),
    "empty input": ({"input_shape": []}, "input_shape"),
    "other head": ({"head": "centers"}, "head.centers"),
    "mlp head": ({"head": "mlp-bn"}, "neck.0.weight"),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_a_spec_that_does_not_fit_the_weights_is_refused_before_building(tmp_path, case, monkeypatch, capsys):
    change, message = SPEC_CASES[case]
    path = _with_meta(tmp_path, "spec.pt", lambda meta: meta["model"].update(change))

    def never(*_a, **_k):
        raise AssertionError("the model was built from a spec that does not fit the weights")

    monkeypatch.setattr(C, "build_model", never)
    with pytest.raises(CheckpointError, match="do not fit|positive integer|input_shape") as info:
        C.load_checkpoint(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
    monkeypatch.undo()
    assert main(["evaluate", "--checkpoint", str(path), "--no-cache", "--device", "cpu"]) == 2
    assert message in _one_error_line(capsys)


def test_an_mlp_bn_spec_with_another_hidden_width_is_refused(tmp_path, monkeypatch):
    path = _with_meta(tmp_path, "hidden.pt", lambda meta: meta["model"].update(head_hidden=100_000),
                      source=CHECKPOINTS / "snojoe_canvases.pt")  # spectral norm + mlp-bn head
    monkeypatch.setattr(C, "build_model", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(CheckpointError, match="head_hidden=100000"):
        C.load_checkpoint(path)


def test_an_imported_model_spec_is_checked_against_its_head_and_still_loads(tmp_path, monkeypatch):
    from ood_core.adapters import build_imported

    model = build_imported("tv:resnet18", 3, (3, 32, 32))
    good = C.save_checkpoint(tmp_path / "tv.pt", model, {"method": "import", "dataset": {"name": "x"}})
    loaded, meta = C.load_checkpoint(good)  # the torchvision network's own state-dict keys
    assert meta["model"]["arch"] == "tv:resnet18"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)
    bad = _with_meta(tmp_path, "tv-bad.pt", lambda m: m["model"].update(num_classes=1000), source=good)
    monkeypatch.setattr(C, "build_imported", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(CheckpointError, match=r"num_classes=1000, but fc.weight is \(3, 512\)"):
        C.load_checkpoint(bad)


@pytest.mark.parametrize("arch", ["smallcnn", "tv:resnet18"])
def test_absurd_sizes_in_the_metadata_are_refused_without_allocating(tmp_path, arch):
    result = _run_measured(f"""
        import torch
        from ood_core import checkpoint as C
        from ood_core.adapters import build_imported
        from ood_core.errors import CheckpointError

        if {arch!r} == "smallcnn":
            raw = torch.load({str(DIGITS)!r}, weights_only=True)
            raw["meta"]["model"]["feature_dim"] = 10**6  # a 2.3 GB last conv, 24 MB head
        else:
            C.save_checkpoint("tv.pt", build_imported("tv:resnet18", 3, (3, 32, 32)), {{"method": "import"}})
            raw = torch.load("tv.pt", weights_only=True)
            raw["meta"]["model"]["num_classes"] = 10**6  # a 2 GB head
        torch.save(raw, "absurd.pt")
        del raw
        try:
            C.load_checkpoint("absurd.pt")
            RESULT = {{"error": None}}
        except CheckpointError as e:
            RESULT = {{"error": str(e)}}
    """, tmp_path)
    assert result["error"] and "do not fit" in result["error"] and "1000000" in result["error"], result
    assert result["peak_kb"] < MEMORY_LIMIT_KB, result


DATASET_CASES = {
    "fewer classes": ({"known": [0, 1, 2, 3, 4]}, "has 5 classes, but the model outputs 6"),
    "other input shape": ({"name": "toy2d", "known": None}, "inputs of shape (2,), but the model takes (1, 8, 8)"),
    "other task": ({"task": "multilabel"}, "is multiclass, but the model was trained for a multilabel task"),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_a_dataset_that_does_not_fit_the_model_is_refused(tmp_path, case, capsys, clear_streamlit_caches):
    change, message = DATASET_CASES[case]
    path = _with_meta(tmp_path, "dataset.pt", lambda meta: meta["dataset"].update(change))
    for argv in (["evaluate", "--checkpoint", str(path), "--no-cache", "--device", "cpu"],
                 ["geometry", "--checkpoint", str(path), "--no-cache", "--device", "cpu"]):
        assert main(argv) == 2
        err = _one_error_line(capsys)
        assert message in err and str(path) in err and "does not fit its weights" in err, err
    model, meta = C.load_checkpoint(path)  # the weights themselves are fine
    from ood_core import views
    from ood_core.app import cached

    with pytest.raises(CheckpointError, match="does not fit its weights"):
        views.evaluate_model(model, meta)
    with pytest.raises(CheckpointError) as info:  # the app's benchmark (every page reads it)
        cached.benchmark_cached(str(path), ("test", None))
    assert message in str(info.value) and "dataset.pt" in str(info.value)
