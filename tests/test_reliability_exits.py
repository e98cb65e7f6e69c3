"""Bad input exits 2 with one specific line, never 1 ("internal error"): numeric options that are
NaN, out of range or of the wrong kind, a backbone that does not fit the data, damaged array
headers, checkpoint metadata that nothing should be built from, and a disk that fills up
while a checkpoint is saved (the previous file stays intact)."""
from __future__ import annotations

import copy
import errno
import os
import struct

import numpy as np
import pytest
import torch

import ood_core.fileio as fileio
from ood_core.cli import main

from conftest import CHECKPOINTS

TOY = str(CHECKPOINTS / "ce_toy2d.pt")


def _meta_edit(raw, change):
    raw = copy.deepcopy(raw)
    change(raw["meta"])
    return raw


# name -> edit of ce_toy2d's metadata
BAD_META = {
    "num-classes": lambda m: m["model"].update(num_classes=10**8),
    "num-classes-no-names": lambda m: (m["model"].update(num_classes=10**8), m["dataset"].pop("class_names")),
    "num-classes-text": lambda m: (m["model"].update(num_classes="4"), m["dataset"].pop("class_names")),
    "input-shape": lambda m: m["model"].update(input_shape=[3]),
    "input-shape-negative": lambda m: (m["model"].update(input_shape=[-2]), m["dataset"].pop("input_shape")),
    "cosine-scale": lambda m: m["model"].update(cosine_scale=float("nan")),
    "feature-dim": lambda m: m["model"].update(feature_dim=10**12),
    "split-seed": lambda m: m["dataset"].update(split_seed="abc"),
    "ood-seed": lambda m: m["dataset"].update(ood_seed=-1),
    "known": lambda m: m["dataset"].update(known=["a", "b"]),
    "known-repeated": lambda m: m["dataset"].update(known=[0, 0, 1, 2]),
    "dataset-name": lambda m: m["dataset"].update(name=7),
    "method": lambda m: m.update(method=123),
    "method-unknown": lambda m: m.update(method="nosuch"),
    "loss-params": lambda m: m.update(loss_params="abc"),
    "loss-param-value": lambda m: m.update(method="movr", loss_params={"T": "abc"}),
    "loss-param-nan": lambda m: m.update(method="movr", loss_params={"T": float("nan")}),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-exits")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (-5, 2), }"
    header += " " * (118 - len(header)) + "\n"
    (d / "negative.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    raw = torch.load(TOY, weights_only=True)
    for name, change in BAD_META.items():
        torch.save(_meta_edit(raw, change), d / f"{name}.pt")
    return d


CASES = [
    ("npy-negative-dim", ["evaluate", "--checkpoint", TOY, "--ood-file", "{d}/negative.npy"], "negative dimension"),
    ("train-weight-decay-nan", ["train", "--dataset", "toy2d", "--epochs", "1", "--weight-decay", "nan"],
     "weight decay must be a finite number"),
    ("train-weight-decay-inf", ["train", "--dataset", "toy2d", "--epochs", "1", "--weight-decay", "inf"],
     "weight decay must be a finite number"),
    ("train-seed-huge", ["train", "--dataset", "toy2d", "--epochs", "1", "--seed", str(10**20)],
     "seed must be a whole number in 0..4294967295"),
    ("train-epochs-huge", ["train", "--dataset", "toy2d", "--epochs", str(10**20)],
     "epochs must be a whole number in 1..100000"),
    ("train-seed-negative", ["train", "--dataset", "toy2d", "--epochs", "1", "--seed", "-1"],
     "seed must be a whole number in 0..4294967295"),
    ("train-smallcnn-on-points", ["train", "--dataset", "toy2d", "--epochs", "1", "--arch", "smallcnn"],
     "smallcnn backbone takes images"),
    ("train-resnet18-on-points", ["train", "--dataset", "toy2d", "--epochs", "1", "--arch", "resnet18"],
     "resnet18 backbone takes images"),
    ("train-mlp-on-images", ["train", "--dataset", "digits", "--epochs", "1", "--arch", "mlp"],
     "mlp backbone takes vectors"),
    ("train-feature-dim-huge", ["train", "--dataset", "toy2d", "--epochs", "1", "--feature-dim", str(10**11)],
     "feature_dim must be a whole number in 1..65536"),
    ("train-workers-huge", ["train", "--dataset", "toy2d", "--epochs", "1", "--workers", "100000"],
     "workers"),
    ("train-known-repeated", ["train", "--dataset", "digits", "--epochs", "1", "--known", "1,1,2"],
     "--known lists class 1 more than once"),
    ("geometry-n-proj-huge", ["geometry", "--checkpoint", TOY, "--n-proj", str(10**11)], "n_proj"),
    ("project-umap-seed-huge", ["project", "--checkpoint", TOY, "--method", "umap", "--seed", str(10**20),
                                "--out", "{tmp}/p.npz"], "--seed must be a whole number in 0..4294967295"),
    ("import-mean-nan", ["import", "--model", "tv:resnet18", "--dataset", "digits", "--mean", "nan", "--std", "1",
                         "--no-eval"], "mean must be a list of finite numbers"),
    ("import-resize-huge", ["import", "--model", "tv:resnet18", "--dataset", "digits", "--resize", str(10**6),
                            "--no-eval"], "resize must be a whole number of pixels"),
    ("meta-num-classes", ["evaluate", "--checkpoint", "{d}/num-classes.pt"], "num_classes=100000000, but head.weight is (4, 32)"),
    ("meta-num-classes-no-names", ["evaluate", "--checkpoint", "{d}/num-classes-no-names.pt"],
     "num_classes=100000000, but head.weight is (4, 32)"),  # checked against the weights first
    ("meta-num-classes-text", ["evaluate", "--checkpoint", "{d}/num-classes-text.pt"],
     "num_classes must be a positive integer"),
    ("meta-input-shape", ["evaluate", "--checkpoint", "{d}/input-shape.pt"], "input_shape[0]=3, but backbone.net.0.weight"),
    ("meta-input-shape-negative", ["evaluate", "--checkpoint", "{d}/input-shape-negative.pt"], "input_shape"),
    ("meta-cosine-scale", ["evaluate", "--checkpoint", "{d}/cosine-scale.pt"], "cosine_scale"),
    ("meta-feature-dim", ["evaluate", "--checkpoint", "{d}/feature-dim.pt"], "feature_dim"),
    ("meta-split-seed", ["evaluate", "--checkpoint", "{d}/split-seed.pt"], "split_seed must be a whole number"),
    ("meta-ood-seed", ["evaluate", "--checkpoint", "{d}/ood-seed.pt"], "ood_seed must be a whole number"),
    ("meta-known", ["evaluate", "--checkpoint", "{d}/known.pt"], "known class"),
    ("meta-known-repeated", ["evaluate", "--checkpoint", "{d}/known-repeated.pt"],
     "known class 0 is listed more than once"),
    ("meta-dataset-name", ["evaluate", "--checkpoint", "{d}/dataset-name.pt"], "dataset name must be text"),
    ("meta-method", ["evaluate", "--checkpoint", "{d}/method.pt"], "'method' must be a method name"),
    ("meta-method-unknown", ["evaluate", "--checkpoint", "{d}/method-unknown.pt"],
     "method 'nosuch' is not a method of this lab (ce, ib"),
    ("meta-loss-params", ["evaluate", "--checkpoint", "{d}/loss-params.pt"], "'loss_params' must be a mapping"),
    ("meta-loss-param-value", ["evaluate", "--checkpoint", "{d}/loss-param-value.pt"], "loss parameter 'T'"),
    ("meta-loss-param-nan", ["evaluate", "--checkpoint", "{d}/loss-param-nan.pt"], "loss parameter 'T'"),
    ("meta-via-train-init", ["train", "--dataset", "toy2d", "--epochs", "1", "--init", "{d}/split-seed.pt"],
     "split_seed"),
]


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_specific_line(argv, message, bad, tmp_path, capsys):
    argv = [a.replace("{d}", str(bad)).replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("train", "import"):
        argv += ["--out", str(tmp_path / "m.pt")]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "internal error" not in err, err
    assert message in err, err
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "p.npz").exists()


class _FillingDisk:
    """``os`` for ood_core.fileio, whose fdopen gives files that fail with ENOSPC after ``room`` bytes."""

    def __init__(self, room: int):
        self.room = room

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, mode):
        f = os.fdopen(fd, mode)
        write, left = f.write, [self.room]

        def limited(data):
            n = len(memoryview(data).cast("B"))
            if n > left[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= n
            return write(data)

        f.write = limited
        return f


def _runtime_error_writer(obj, f):
    f.write(b"PK\x03\x04 some bytes")
    raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4608 vs 4500")


@pytest.mark.parametrize("how", ["disk-fills-during-torch-save", "torch-unexpected-pos"])
def test_a_full_disk_while_saving_a_checkpoint_exits_2_and_keeps_the_previous_file(how, tmp_path, monkeypatch,
                                                                                    capsys):
    out = tmp_path / "m.pt"
    out.write_bytes(open(TOY, "rb").read())
    before = out.read_bytes()
    if how == "disk-fills-during-torch-save":  # the real torch.save, on a disk that fills after 4 KiB
        monkeypatch.setattr(fileio, "os", _FillingDisk(4096))
    else:  # what torch raises when its writer loses bytes
        monkeypatch.setattr("ood_core.checkpoint.torch.save", _runtime_error_writer)
    rc = main(["train", "--dataset", "toy2d", "--epochs", "1", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and f"cannot write {out}" in err and "no space left on device" in err.lower(), err
    assert f"the previous {out} is untouched" in err, err
    assert out.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # and no temporary file is left
