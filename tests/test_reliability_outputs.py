"""No command's output can replace one of its inputs or another of its outputs; outputs through
symbolic links are written to the link's target (the link stays); devices and streams such as
/dev/stdout are refused; a refused or failed output leaves no folder behind."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ood_core.cli import main

from conftest import CHECKPOINTS

TOY = CHECKPOINTS / "ce_toy2d.pt"  # the cheapest checkpoint to load and evaluate


@pytest.fixture
def files(tmp_path):
    """A folder with a checkpoint under two names (.pt and .npz), an OOD array, a state dict,
    a hard link and symbolic links to the checkpoint."""
    shutil.copy(TOY, tmp_path / "v.pt")
    shutil.copy(TOY, tmp_path / "v.npz")  # a checkpoint is read whatever its suffix
    np.save(tmp_path / "o.npy", np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32))
    shutil.copy(tmp_path / "o.npy", tmp_path / "o.npz")
    (tmp_path / "w.pt").write_bytes(b"weights")
    os.link(tmp_path / "v.pt", tmp_path / "hard.json")
    os.symlink(tmp_path / "v.pt", tmp_path / "link.json")
    os.symlink("/dev/stdout", tmp_path / "stdout.pt")
    (tmp_path / "sub").mkdir()
    return tmp_path


def _snapshot(d):
    """Each entry of ``d``: a link's target, a regular file's bytes, else its kind."""
    return {p.name: ("link", os.readlink(p)) if p.is_symlink() else ("file", p.read_bytes()) if p.is_file()
            else ("other", p.is_dir()) for p in d.iterdir()}


def _fill(argv, d):
    return [a.replace("{d}", str(d)) for a in argv]


# (id, argv, message fragment)
CASES = [
    ("eval-json-is-checkpoint", ["evaluate", "--checkpoint", "{d}/v.pt", "--json", "{d}/v.pt"], "--checkpoint input"),
    ("eval-scores-is-checkpoint", ["evaluate", "--checkpoint", "{d}/v.npz", "--scores", "{d}/v.npz"],
     "--checkpoint input"),
    ("eval-outputs-is-checkpoint", ["evaluate", "--checkpoint", "{d}/v.npz", "--outputs", "{d}/v.npz"],
     "--checkpoint input"),
    ("eval-json-is-ood-file", ["evaluate", "--checkpoint", "{d}/v.pt", "--ood-file", "{d}/o.npy", "--json", "{d}/o.npy"],
     "--ood-file input"),
    ("eval-scores-is-ood-file", ["evaluate", "--checkpoint", "{d}/v.pt", "--ood-file", "{d}/o.npz", "--scores",
                                 "{d}/o.npz"], "--ood-file input"),
    ("eval-json-dotdot", ["evaluate", "--checkpoint", "{d}/v.pt", "--json", "{d}/sub/../v.pt"], "--checkpoint input"),
    ("eval-json-hard-link", ["evaluate", "--checkpoint", "{d}/v.pt", "--json", "{d}/hard.json"], "--checkpoint input"),
    ("eval-json-symlink", ["evaluate", "--checkpoint", "{d}/v.pt", "--json", "{d}/link.json"], "--checkpoint input"),
    ("eval-two-outputs", ["evaluate", "--checkpoint", "{d}/v.pt", "--scores", "{d}/s.npz", "--outputs", "{d}/s.npz"],
     "are the same file"),
    ("eval-two-outputs-dotdot", ["evaluate", "--checkpoint", "{d}/v.pt", "--scores", "{d}/s.npz", "--outputs",
                                 "{d}/sub/../s.npz"], "are the same file"),
    ("eval-json-stdout", ["evaluate", "--checkpoint", "{d}/v.pt", "--json", "/dev/stdout"], "/dev/stdout"),
    ("eval-json-devnull", ["evaluate", "--checkpoint", "{d}/v.pt", "--json", "/dev/null"], "not a regular file"),
    ("eval-json-fifo", ["evaluate", "--checkpoint", "{d}/v.pt", "--json", "{d}/fifo.json"], "not a regular file"),
    ("train-out-is-init", ["train", "--dataset", "toy2d", "--init", "{d}/v.pt", "--out", "{d}/v.pt"], "--init input"),
    ("train-out-link-to-stdout", ["train", "--dataset", "toy2d", "--epochs", "1", "--out", "{d}/stdout.pt"],
     "/dev/stdout"),
    ("import-out-is-weights", ["import", "--model", "tv:resnet18", "--dataset", "toy2d", "--weights", "{d}/w.pt",
                               "--out", "{d}/w.pt"], "--weights input"),
    ("geometry-json-is-checkpoint", ["geometry", "--checkpoint", "{d}/v.pt", "--json", "{d}/link.json"],
     "--checkpoint input"),
    ("project-out-is-checkpoint", ["project", "--checkpoint", "{d}/v.npz", "--out", "{d}/v.npz"], "--checkpoint input"),
    ("features-cache-is-a-file", ["features", "--checkpoint", "{d}/v.pt", "--cache-dir", "{d}/v.pt"], "--cache-dir"),
]


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_output_never_replaces_an_input(argv, message, files, capsys):
    os.mkfifo(files / "fifo.json")
    before = _snapshot(files)
    rc = main(_fill(argv, files))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert _snapshot(files) == before  # every input intact, nothing new (no temporary file, no folder)


def test_manifest_never_replaces_a_checkpoint_linked_as_manifest_json(tmp_path, capsys):
    shutil.copy(TOY, tmp_path / "a.pt")
    os.symlink("a.pt", tmp_path / "manifest.json")
    assert main(["manifest", str(tmp_path)]) == 2
    assert "checkpoint input" in capsys.readouterr().err
    assert (tmp_path / "a.pt").read_bytes() == TOY.read_bytes()


def test_an_output_that_is_a_symbolic_link_is_written_through(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "real.json").write_text("{}")
    os.symlink("reports/real.json", tmp_path / "latest.json")
    assert main(["evaluate", "--checkpoint", str(TOY), "--json", str(tmp_path / "latest.json")]) == 0
    assert (tmp_path / "latest.json").is_symlink()  # the link is kept...
    report = json.loads((tmp_path / "reports" / "real.json").read_text())  # ...and its target holds the report
    assert "ood" in report
    assert sorted(os.listdir(tmp_path / "reports")) == ["real.json"]  # no temporary file left


def test_dotdot_paths_create_no_stray_folder(tmp_path, capsys):
    out = tmp_path / "a" / ".." / "a" / "sub" / ".." / "r.json"
    # refused later (an unknown OOD set): no folder at all
    assert main(["evaluate", "--checkpoint", str(TOY), "--ood", "nope", "--json", str(out)]) == 2
    assert os.listdir(tmp_path) == []
    capsys.readouterr()
    assert main(["train", "--method", "nope", "--out", str(tmp_path / "a" / ".." / "a" / "sub" / ".." / "x.pt")]) == 2
    assert os.listdir(tmp_path) == []
    capsys.readouterr()
    # written: a/r.json only, no empty a/sub
    assert main(["evaluate", "--checkpoint", str(TOY), "--json", str(out)]) == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/r.json"]


def test_a_failed_write_removes_the_folders_it_created(tmp_path):
    from ood_core.fileio import OutputError, atomic_write

    def fails(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(tmp_path / "new" / "deeper" / "x.json", fails)
    assert os.listdir(tmp_path) == []
