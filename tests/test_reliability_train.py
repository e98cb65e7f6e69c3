"""Issue 7, training: with ``train --checkpoint-every N`` a NaN/Inf loss or Ctrl-C leaves the last
good (partial) checkpoint at --out and says so in one line; without it nothing is written and a
previous file at --out is untouched."""
import dataclasses
import importlib
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from ood_core.checkpoint import load_checkpoint, manifest_entry
from ood_core.cli import main
from ood_core.methods import get_method
from ood_core.train import recommended_config, train

from conftest import CHECKPOINTS, ROOT

train_mod = importlib.import_module("ood_core.train")  # the module (ood_core.train is the function)


class _FailFrom(nn.Module):
    """The method's own loss, except from epoch ``epoch`` on: NaN (or raise KeyboardInterrupt, as Ctrl-C would)."""

    def __init__(self, inner, epoch, what):
        super().__init__()
        self.inner, self.epoch, self.what = inner, epoch, what

    def forward(self, out, target, ctx):
        loss = self.inner(out, target, ctx)
        if ctx.epoch >= self.epoch:
            if self.what == "interrupt":
                raise KeyboardInterrupt
            return loss * float(self.what)
        return loss


@pytest.fixture
def fail_from(monkeypatch):
    """``fail_from(epoch, what)``: make the training loss of every method fail from ``epoch`` on
    (``what`` = "nan", "inf" or "interrupt"); the epochs before it train exactly as usual."""

    def install(epoch, what="nan"):
        def patched(name):
            m = get_method(name)
            return dataclasses.replace(m, make_loss=lambda **kw: _FailFrom(m.make_loss(**kw), epoch, what))

        monkeypatch.setattr(train_mod, "get_method", patched)

    return install


class _Stop(Exception):
    pass


def _reference_states(epochs, upto, seed):
    """State dicts after epochs 1..upto of the normal CLI-configured run with ``epochs`` epochs."""
    states = []

    def record(epoch, model):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if epoch == upto:
            raise _Stop

    cfg = recommended_config("ce", epochs=epochs, seed=seed)
    with pytest.raises(_Stop):
        train("ce", "toy2d", cfg, evaluate_after=False, epoch_end=record)
    return states


def _one_line(err):
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("what", ["nan", "inf"])
def test_divergence_keeps_the_last_good_checkpoint(what, tmp_path, fail_from, capsys):
    out = tmp_path / "run.pt"
    fail_from(3, what)
    rc = main(["train", "--dataset", "toy2d", "--epochs", "5", "--seed", "3", "--checkpoint-every", "1",
               "--out", str(out), "--quiet"])
    assert rc == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("error: training loss became") and str(out) in err
    assert "partial checkpoint after epoch 2 of 5" in err

    model, meta = load_checkpoint(out)
    assert meta["partial"] == {"epochs_done": 2, "epochs": 5}
    assert "metrics" not in meta and [h["epoch"] for h in meta["history"]] == [1, 2]
    # exactly epoch 2's weights of the same run (not a 2-epoch run: the LR schedule spans 5 epochs)
    _assert_same_weights(model.state_dict(), _reference_states(5, 2, seed=3)[1])
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left

    # a partial checkpoint is a normal model: evaluate and the manifest take it
    assert main(["evaluate", "--checkpoint", str(out), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= report["id_accuracy"] <= 1.0 and report["ood"]
    assert manifest_entry(out)["partial"] == {"epochs_done": 2, "epochs": 5}


def test_divergence_without_periodic_checkpoints_leaves_the_previous_file(tmp_path, fail_from, capsys):
    out = tmp_path / "run.pt"
    out.write_bytes((CHECKPOINTS / "ce_toy2d.pt").read_bytes())
    before = out.read_bytes()
    fail_from(2)
    assert main(["train", "--dataset", "toy2d", "--epochs", "4", "--out", str(out), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "loss became nan at epoch 2" in err and f"the previous {out} is untouched" in err
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_divergence_before_the_first_periodic_checkpoint_writes_nothing(tmp_path, fail_from, capsys):
    out = tmp_path / "run.pt"
    fail_from(2)
    assert main(["train", "--dataset", "toy2d", "--epochs", "6", "--checkpoint-every", "3", "--out", str(out),
                 "--quiet"]) == 2
    assert f"nothing was written (no {out})" in _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_interrupt_in_process_keeps_the_last_good_checkpoint(tmp_path, fail_from, capsys):
    out = tmp_path / "run.pt"
    out.write_bytes((CHECKPOINTS / "ce_toy2d.pt").read_bytes())
    fail_from(3, "interrupt")
    assert main(["train", "--dataset", "toy2d", "--epochs", "5", "--seed", "4", "--checkpoint-every", "2",
                 "--out", str(out), "--quiet"]) == 130
    err = _one_line(capsys.readouterr().err)
    assert err == (f"interrupted; {out} holds the last good state: a partial checkpoint after epoch 2 of 5 "
                   "(loadable; run train again for the complete one)")
    model, meta = load_checkpoint(out)
    assert meta["partial"]["epochs_done"] == 2
    _assert_same_weights(model.state_dict(), _reference_states(5, 2, seed=4)[1])


def test_periodic_checkpoints_do_not_change_the_final_checkpoint(tmp_path, capsys):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    common = ["train", "--dataset", "toy2d", "--epochs", "3", "--seed", "5", "--quiet"]
    assert main([*common, "--out", str(a)]) == 0
    assert main([*common, "--checkpoint-every", "1", "--out", str(b)]) == 0
    ma, meta_a = load_checkpoint(a)
    mb, meta_b = load_checkpoint(b)
    _assert_same_weights(ma.state_dict(), mb.state_dict())
    assert "partial" not in meta_b and meta_b["metrics"] == meta_a["metrics"]
    assert "partial" not in manifest_entry(b)


def _start_training(out, *extra, quiet=True, stderr=subprocess.PIPE):
    cmd = [sys.executable, "-m", "ood_core", "train", "--dataset", "toy2d", "--epochs", "100000",
           "--out", str(out), *extra] + (["--quiet"] if quiet else [])
    # Ctrl-C handled by default in the child, whatever this process inherited: a shell that starts
    # a command in the background (`cmd &`, nohup) ignores SIGINT for it and its children, and a
    # Python started with SIGINT ignored keeps ignoring it (the training would then never stop)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"training stopped early (rc {proc.returncode})")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("timed out")


def test_ctrl_c_from_the_cli_leaves_a_loadable_partial_checkpoint(tmp_path):
    out = tmp_path / "run.pt"
    proc = _start_training(out, "--checkpoint-every", "1")
    _wait_for(out.exists, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = _one_line(err)
    match = re.fullmatch(rf"interrupted; {re.escape(str(out))} holds the last good state: a partial checkpoint "
                         r"after epoch (\d+) of 100000 \(loadable; run train again for the complete one\)", line)
    assert match, line
    model, meta = load_checkpoint(out)
    assert meta["partial"] == {"epochs_done": int(match.group(1)), "epochs": 100000}  # the message tells the truth
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left


def test_ctrl_c_without_periodic_checkpoints_writes_nothing(tmp_path):
    out = tmp_path / "run.pt"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as f:
        proc = _start_training(out, quiet=False, stderr=f)
        _wait_for(lambda: "train ce/toy2d" in log.read_text(), proc)  # the progress bar: training has begun
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.endswith(f"\ninterrupted; nothing was written (no {out})\n")  # after the closed progress bar
    assert [p.name for p in tmp_path.iterdir()] == ["stderr.txt"]
