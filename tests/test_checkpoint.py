import json
import os
import pickle

import pytest
import torch

import ood_core
from ood_core.checkpoint import load_checkpoint, save_checkpoint
from ood_core.data import load_benchmark_from_spec
from ood_core.methods import default_score_names, method_score_params
from ood_core.errors import CheckpointError, OODCoreError
from ood_core.models import build_model

from conftest import CHECKPOINTS


def test_roundtrip_gives_identical_outputs(tmp_path, tiny_digits_run):
    path = save_checkpoint(tmp_path / "m.pt", tiny_digits_run.model, tiny_digits_run.meta)
    model, meta = load_checkpoint(path)
    assert not model.training
    x = ood_core.load_benchmark("digits").test.x[:16]
    tiny_digits_run.model.eval()
    with torch.no_grad():
        a, b = tiny_digits_run.model(x), model(x)
    assert torch.equal(a.features, b.features) and torch.equal(a.logits, b.logits)
    assert meta["method"] == "ce" and meta["model"]["arch"] == "smallcnn"
    assert meta["metrics"] == json.loads(json.dumps(tiny_digits_run.meta["metrics"]))


def test_spectral_norm_model_roundtrip(tmp_path):
    model = build_model("smallcnn", 3, (1, 8, 8), spectral_norm=True)
    model.train()
    model(torch.rand(4, 1, 8, 8))  # one power iteration updates u, v
    model.eval()
    save_checkpoint(tmp_path / "sn.pt", model, {"method": "ce"})
    loaded, _ = load_checkpoint(tmp_path / "sn.pt")
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, loaded(x).logits)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format": "ood_core.checkpoint", "meta": {}, "state_dict": {}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Payload(tmp_path / "PWNED")))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_and_foreign_files_give_one_clear_error(tmp_path):
    good = (CHECKPOINTS / "ce_digits.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    for name, pattern in [("trunc.pt", "truncated"), ("text.pt", "not a PyTorch"),
                          ("foreign.pt", "not an ood_core checkpoint"), ("missing.pt", "no such")]:
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)


def test_wrong_architecture_weights_are_refused(tmp_path, tiny_digits_run):
    path = save_checkpoint(tmp_path / "m.pt", tiny_digits_run.model, tiny_digits_run.meta)
    raw = torch.load(path, weights_only=True)
    raw["meta"]["model"]["feature_dim"] = 64  # claims a different shape than the weights have
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_failed_save_keeps_previous_checkpoint(tmp_path, tiny_digits_run, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", tiny_digits_run.model, tiny_digits_run.meta)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial data")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, tiny_digits_run.model, {"method": "ce"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    load_checkpoint(path)


SHIPPED = sorted(p.name for p in CHECKPOINTS.glob("*.pt"))


def test_one_checkpoint_per_method_is_shipped():
    import ood_core

    methods = {load_checkpoint(CHECKPOINTS / n)[1]["method"] for n in SHIPPED}
    assert methods == set(ood_core.METHODS)
    assert {"ce_digits.pt", "ce_toy2d.pt"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_load_and_their_stored_metrics_hold(name):
    model, meta = load_checkpoint(CHECKPOINTS / name)
    bench = load_benchmark_from_spec(meta["dataset"])
    report = ood_core.evaluate(model, bench, score_names=default_score_names(meta, bench),
                               score_params=method_score_params(meta)).report  # e.g. movr's softmax at T
    quality = next(k for k in report if k.startswith("id_"))
    assert report[quality] == pytest.approx(meta["metrics"][quality], abs=0.005)
    for s, per_score in meta["metrics"]["ood"].items():
        for score, m in per_score.items():
            assert report["ood"][s][score]["auroc"] == pytest.approx(m["auroc"], abs=2e-3)  # tolerance: BLAS differences across CPUs
    if name == "ce_digits.pt":
        assert report["id_accuracy"] >= 0.97


def test_manifest_describes_every_shipped_checkpoint():
    from ood_core.checkpoint import manifest_entry

    manifest = json.loads((CHECKPOINTS / "manifest.json").read_text())
    assert manifest["checkpoints"] == [manifest_entry(p) for p in sorted(CHECKPOINTS.glob("*.pt"))]


def test_a_method_this_lab_does_not_have_is_refused_on_save_and_on_load(tmp_path):
    """Saving one would write a file no load accepts; loading one (edited, or from another
    version of the lab) used to succeed and score it with every score of its task."""
    model = build_model("mlp", 3, (2,))
    with pytest.raises(OODCoreError, match="cannot save x.pt: method 'nosuch' is not a method of this lab"):
        save_checkpoint(tmp_path / "x.pt", model, {"method": "nosuch"})
    assert not (tmp_path / "x.pt").exists()
    path = save_checkpoint(tmp_path / "ok.pt", model, {"method": "ce"})
    raw = torch.load(path, weights_only=True)
    raw["meta"]["method"] = "nosuch"
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="method 'nosuch' is not a method of this lab.*register_method"):
        load_checkpoint(tmp_path / "edited.pt")
    for method in (None, "import", "movr"):  # no method, an imported model, a registered method
        raw["meta"]["method"] = method
        torch.save(raw, tmp_path / "fine.pt")
        assert load_checkpoint(tmp_path / "fine.pt")[1].get("method") == method
