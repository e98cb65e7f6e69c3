"""Issue 7, CLI: every error path exits non-zero with one line on stderr (no traceback);
``--debug`` shows the traceback; argparse usage errors keep argparse's short usage message."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ood_core.cli as cli
from ood_core.cli import main

from conftest import CHECKPOINTS, ROOT

TOY = str(CHECKPOINTS / "ce_toy2d.pt")  # vector model: the cheapest to load and evaluate


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A folder of bad inputs: names -> paths (as str)."""
    d = tmp_path_factory.mktemp("bad-inputs")
    good = (CHECKPOINTS / "ce_toy2d.pt").read_bytes()
    (d / "trunc.pt").write_bytes(good[: len(good) // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "notes.txt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, d / "foreign.pt")
    torch.save({"format": "ood_core.checkpoint", "meta": {}, "state_dict": {}, "x": _Payload(d / "PWNED")},
               d / "payload.pt")
    raw = torch.load(CHECKPOINTS / "ce_toy2d.pt", weights_only=True)
    raw["meta"]["model"]["feature_dim"] = raw["meta"]["model"]["feature_dim"] + 5
    torch.save(raw, d / "wrong-arch.pt")
    (d / "folder.pt").mkdir()
    (d / "empty-folder").mkdir()
    nan = np.random.default_rng(0).random((5, 2))
    nan[0, 0] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "shape.npy", np.zeros((5, 3, 4)))
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "corrupt-folder").mkdir()
    (d / "corrupt-folder" / "bad.pt").write_bytes(good[:100])
    return {p.name: str(p) for p in d.iterdir()}


# (id, argv, message fragment); "{NAME}" is replaced by the path of that bad input, "{file}" is a
# regular file (so "{file}/x" is a path no user, root included, can create), "{tmp}" a fresh folder.
CASES = [
    # ---- train: names, numbers, params, output paths
    ("train-method", ["train", "--method", "nope", "--out", "{tmp}/m.pt"], "unknown method"),
    ("train-dataset", ["train", "--dataset", "nope", "--out", "{tmp}/m.pt"], "unknown dataset"),
    ("train-task", ["train", "--method", "jointenergy", "--dataset", "toy2d", "--out", "{tmp}/m.pt"], "multilabel"),
    ("train-epochs", ["train", "--dataset", "toy2d", "--epochs", "0", "--out", "{tmp}/m.pt"], "epochs"),
    ("train-lr-neg", ["train", "--dataset", "toy2d", "--lr", "-1", "--out", "{tmp}/m.pt"], "learning rate"),
    ("train-lr-nan", ["train", "--dataset", "toy2d", "--lr", "nan", "--out", "{tmp}/m.pt"], "learning rate"),
    ("train-batch", ["train", "--dataset", "toy2d", "--batch-size", "0", "--out", "{tmp}/m.pt"], "batch size"),
    ("train-wd", ["train", "--dataset", "toy2d", "--weight-decay", "-1", "--out", "{tmp}/m.pt"], "weight decay"),
    ("train-workers", ["train", "--dataset", "toy2d", "--workers", "-1", "--out", "{tmp}/m.pt"], "workers"),
    ("train-geometry", ["train", "--dataset", "toy2d", "--track-geometry", "-1", "--out", "{tmp}/m.pt"], "geometry"),
    ("train-ckpt-every", ["train", "--dataset", "toy2d", "--checkpoint-every", "-1", "--out", "{tmp}/m.pt"],
     "--checkpoint-every"),
    ("train-feature-dim", ["train", "--dataset", "toy2d", "--feature-dim", "0", "--out", "{tmp}/m.pt"],
     "--feature-dim"),
    ("train-arch", ["train", "--dataset", "toy2d", "--arch", "nope", "--out", "{tmp}/m.pt"], "unknown architecture"),
    ("train-known-text", ["train", "--known", "a,b", "--out", "{tmp}/m.pt"], "--known"),
    ("train-known-one", ["train", "--known", "0", "--out", "{tmp}/m.pt"], "at least 2 known"),
    ("train-param-no-eq", ["train", "--dataset", "toy2d", "--param", "T", "--out", "{tmp}/m.pt"], "KEY=VALUE"),
    ("train-param-value", ["train", "--dataset", "toy2d", "--param", "T=abc", "--out", "{tmp}/m.pt"], "not a number"),
    ("train-param-name", ["train", "--dataset", "toy2d", "--param", "nope=1", "--out", "{tmp}/m.pt"],
     "no loss parameter"),
    ("train-fp16-cpu", ["train", "--dataset", "toy2d", "--amp", "fp16", "--device", "cpu", "--out", "{tmp}/m.pt"],
     "fp16"),
    ("train-device", ["train", "--dataset", "toy2d", "--device", "tpu", "--out", "{tmp}/m.pt"], "unknown device"),
    ("train-out-suffix", ["train", "--dataset", "toy2d", "--out", "{tmp}/m.txt"], ".pt"),
    ("train-out-under-file", ["train", "--dataset", "toy2d", "--out", "{file}/m.pt"], "cannot write"),
    ("train-out-folder", ["train", "--dataset", "toy2d", "--out", "{folder.pt}"], "is a folder"),
    ("train-real-missing", ["train", "--dataset", "cifar10", "--data-root", "{empty-folder}", "--out", "{tmp}/m.pt"],
     "cifar10"),
    # ---- evaluate: every kind of bad checkpoint, names, OOD files, outputs
    ("eval-missing", ["evaluate", "--checkpoint", "{tmp}/missing.pt"], "no such checkpoint"),
    ("eval-folder", ["evaluate", "--checkpoint", "{folder.pt}"], "is a folder"),
    ("eval-text", ["evaluate", "--checkpoint", "{notes.txt}"], "not a PyTorch checkpoint"),
    ("eval-empty", ["evaluate", "--checkpoint", "{empty.pt}"], "not a PyTorch checkpoint"),
    ("eval-truncated", ["evaluate", "--checkpoint", "{trunc.pt}"], "truncated"),
    ("eval-foreign", ["evaluate", "--checkpoint", "{foreign.pt}"], "not an ood_core checkpoint"),
    ("eval-payload", ["evaluate", "--checkpoint", "{payload.pt}"], "refused"),
    ("eval-wrong-arch", ["evaluate", "--checkpoint", "{wrong-arch.pt}"], "do not fit"),
    ("eval-ood", ["evaluate", "--checkpoint", TOY, "--ood", "nope"], "unknown OOD set"),
    ("eval-score", ["evaluate", "--checkpoint", TOY, "--score-names", "nope"], "unknown score"),
    ("eval-ood-file-missing", ["evaluate", "--checkpoint", TOY, "--ood-file", "{tmp}/missing.npy"], "no such file"),
    ("eval-ood-file-text", ["evaluate", "--checkpoint", TOY, "--ood-file", "{notes.txt}"], "unsupported file type"),
    ("eval-ood-file-nan", ["evaluate", "--checkpoint", TOY, "--ood-file", "{nan.npy}"], "NaN"),
    ("eval-ood-file-shape", ["evaluate", "--checkpoint", TOY, "--ood-file", "{shape.npy}"], "shape"),
    ("eval-ood-file-pickle", ["evaluate", "--checkpoint", TOY, "--ood-file", "{objects.npy}"], "objects.npy"),
    ("eval-ood-file-corrupt", ["evaluate", "--checkpoint", TOY, "--ood-file", "{broken.npy}"], "broken.npy"),
    ("eval-ood-file-folder", ["evaluate", "--checkpoint", TOY, "--ood-file", "{empty-folder}"], "empty-folder"),
    ("eval-json-under-file", ["evaluate", "--checkpoint", TOY, "--json", "{file}/r.json"], "cannot write"),
    ("eval-json-folder", ["evaluate", "--checkpoint", TOY, "--json", "{empty-folder}"], "is a folder"),
    ("eval-scores-suffix", ["evaluate", "--checkpoint", TOY, "--scores", "{tmp}/s.txt"], ".npz"),
    ("eval-scores-under-file", ["evaluate", "--checkpoint", TOY, "--scores", "{file}/s.npz"], "cannot write"),
    ("eval-batch", ["evaluate", "--checkpoint", TOY, "--batch-size", "0"], "--batch-size"),
    ("eval-device", ["evaluate", "--checkpoint", TOY, "--device", "tpu"], "unknown device"),
    # ---- geometry / project / features / manifest
    ("geometry-missing", ["geometry", "--checkpoint", "{tmp}/missing.pt"], "no such checkpoint"),
    ("geometry-truncated", ["geometry", "--checkpoint", "{trunc.pt}"], "truncated"),
    ("geometry-probe", ["geometry", "--checkpoint", TOY, "--probe-size", "0"], "--probe-size"),
    ("geometry-n-proj", ["geometry", "--checkpoint", TOY, "--n-proj", "0"], "--n-proj"),
    ("geometry-json-under-file", ["geometry", "--checkpoint", TOY, "--json", "{file}/g.json"], "cannot write"),
    ("project-suffix", ["project", "--checkpoint", TOY, "--out", "{tmp}/p.txt"], ".npz"),
    ("project-under-file", ["project", "--checkpoint", TOY, "--out", "{file}/p.npz"], "cannot write"),
    ("project-foreign", ["project", "--checkpoint", "{foreign.pt}", "--out", "{tmp}/p.npz"], "not an ood_core"),
    ("features-no-cache", ["features", "--checkpoint", TOY, "--no-cache"], "--no-cache"),
    ("features-set", ["features", "--checkpoint", TOY, "--sets", "nope"], "unknown set"),
    ("features-payload", ["features", "--checkpoint", "{payload.pt}"], "refused"),
    ("manifest-missing", ["manifest", "{tmp}/no-such-folder"], "no such folder"),
    ("manifest-file", ["manifest", "{notes.txt}"], "is a file"),
    ("manifest-corrupt", ["manifest", "{corrupt-folder}"], "bad.pt"),
]


def _fill(argv, bad, tmp_path):
    names = {**bad, "tmp": str(tmp_path), "file": bad["notes.txt"]}
    out = []
    for a in argv:
        for k, v in names.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_error_path_is_one_line_and_nonzero(argv, message, bad, tmp_path, capsys):
    argv = _fill(argv, bad, tmp_path)
    before = sorted(os.listdir(tmp_path))
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, (rc, err)  # input error, not an "internal error" (1)
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err + captured.out and "internal error" not in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporary file left
    assert not os.path.exists(os.path.join(os.path.dirname(bad["payload.pt"]), "PWNED"))


@pytest.mark.parametrize("argv", [
    ["evaluate", "--checkpoint", "{trunc.pt}"],
    ["train", "--dataset", "toy2d", "--out", "{file}/m.pt"],
    ["manifest", "{tmp}/no-such-folder"],
])
def test_debug_reraises_with_the_traceback(argv, bad, tmp_path):
    with pytest.raises(cli.OODCoreError):
        main(["--debug", *_fill(argv, bad, tmp_path)])


def test_debug_traceback_from_the_entry_point(bad):
    cmd = [sys.executable, "-m", "ood_core", "evaluate", "--checkpoint", bad["trunc.pt"]]
    plain = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.count("\n") == 1 and plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    debug = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and "CheckpointError" in debug.stderr


def test_unexpected_errors_are_one_line_with_exit_1(monkeypatch, capsys):
    def buggy(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "cmd_list", buggy)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: internal error RuntimeError: something broke")
    assert "--debug" in err
    with pytest.raises(RuntimeError):
        main(["--debug", "list"])


def test_interrupt_in_another_command_says_nothing_was_written(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_evaluate", interrupted)
    assert main(["evaluate", "--checkpoint", TOY]) == 130
    assert capsys.readouterr().err == "interrupted; nothing was written\n"


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "abc", "--out", "x.pt"],  # not a number
    ["train"],  # --out missing
    ["evaluate"],  # --checkpoint missing
    ["geometry", "--checkpoint", "x.pt", "--jacobian", "nope"],  # not a choice
    ["nope"],  # unknown command
    ["train", "--out", "x.pt", "--no-such-option"],
])
def test_usage_errors_are_argparse_messages_not_tracebacks(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert err.startswith("usage: ") and "Traceback" not in err
    # argparse's usage (wrapped over several lines for `train`), then one line naming the error
    assert " error: " in lines[-1] and sum("error:" in ln for ln in lines) == 1
