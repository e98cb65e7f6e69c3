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
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
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

    from apptest_helpers import APP, TIMEOUT
    from ood_core import checkpoint_store

    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(damaged.parent))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "damaged" in at.error[0].value and "damaged.pt" in at.error[0].value
    assert not at.dataframe and not at.get("plotly_chart")
