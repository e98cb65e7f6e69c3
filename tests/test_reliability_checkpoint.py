"""Issue 7, checkpoints: a writer killed (SIGKILL) in the middle of a save leaves the previous
checkpoint byte-identical and loadable; the hidden temporary file it leaves behind is not
mistaken for a checkpoint."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from ood_core.checkpoint import load_checkpoint, save_checkpoint, write_manifest
from ood_core.errors import CheckpointError
from ood_core.models import build_model

from conftest import CHECKPOINTS, ROOT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

# Saves a checkpoint to argv[1] with the real save_checkpoint/atomic_write; torch.save is slowed
# down so that the process is still writing the temporary file when the test kills it: it writes
# the first half of the real archive, then waits (the test's SIGKILL lands here).
SLOW_WRITER = """
import io, sys, time, torch
from ood_core.checkpoint import save_checkpoint
from ood_core.models import build_model
real_save = torch.save
def slow_save(obj, f, *a, **k):
    buf = io.BytesIO()
    real_save(obj, buf, *a, **k)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    time.sleep(120)
    f.write(data[len(data) // 2:])
torch.save = slow_save
save_checkpoint(sys.argv[1], build_model("mlp", 4, (2,), feature_dim=256), {"method": "ce", "value": 3.0})
"""

# Saves two big models (constant weights 1.0 and 2.0) alternately to argv[1], forever.
LOOP_WRITER = """
import sys, torch
from ood_core.checkpoint import save_checkpoint
from ood_core.models import build_model
models = []
for value in (2.0, 1.0):
    m = build_model("resnet18", 10, (3, 32, 32))
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.is_floating_point():
                t.fill_(value)
    models.append(m)
i = 0
while True:
    save_checkpoint(sys.argv[1], models[i % 2], {"method": "ce", "value": 2.0 - i % 2})
    i += 1
"""


def _temporaries(folder, name):
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")]


def _kill_when_writing(proc, folder, name, min_size=1, timeout=60.0):
    """Poll until a temporary ``.NAME.*.tmp`` of at least ``min_size`` bytes exists, then SIGKILL ``proc``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        tmps = [p for p in _temporaries(folder, name) if p.exists() and p.stat().st_size >= min_size]
        if tmps:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no temporary file appeared in {timeout} s")


def test_kill_mid_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    good_src = CHECKPOINTS / "ce_toy2d.pt"
    path.write_bytes(good_src.read_bytes())
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when_writing(proc, tmp_path, path.name, min_size=100)
    assert proc.returncode == -signal.SIGKILL

    # the previous checkpoint: byte-identical and loadable
    assert path.read_bytes() == before
    model, meta = load_checkpoint(path)
    assert meta["method"] == "ce" and meta["dataset"]["name"] == "toy2d"

    # the killed writer's half-written archive is left as a hidden temporary file, and is
    # itself refused with the one-line "truncated" message if someone loads it by hand
    (tmp,) = _temporaries(tmp_path, path.name)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp)

    # nothing that looks for checkpoints picks it up
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["model.pt"]
    write_manifest(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["file"] for e in manifest["checkpoints"]] == ["model.pt"]

    # and the next save to the same path works
    save_checkpoint(path, model, {**meta, "saved": "again"})
    assert load_checkpoint(path)[1]["saved"] == "again"


def test_kill_during_repeated_saves_always_leaves_a_complete_checkpoint(tmp_path):
    """No slowed-down write: a process saves two 45 MB models alternately, as fast as it can; it is
    killed the moment a temporary file shows up. Whatever it was doing, the file at the path is
    one of the two complete checkpoints."""
    path = tmp_path / "big.pt"
    first = build_model("resnet18", 10, (3, 32, 32))
    with torch.no_grad():
        for t in first.state_dict().values():
            if t.is_floating_point():
                t.fill_(1.0)
    save_checkpoint(path, first, {"method": "ce", "value": 1.0})
    proc = subprocess.Popen([sys.executable, "-c", LOOP_WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when_writing(proc, tmp_path, path.name, min_size=1)
    assert proc.returncode == -signal.SIGKILL
    model, meta = load_checkpoint(path)
    value = meta["value"]
    assert value in (1.0, 2.0)
    assert all(torch.all(t == value) for t in model.state_dict().values() if t.is_floating_point())
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["big.pt"]
    assert all(p.name.startswith(".big.pt.") and p.name.endswith(".tmp") for p in tmp_path.iterdir()
               if p.name != "big.pt")
