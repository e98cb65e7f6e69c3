import math

import pytest
import torch

import ood_core
from ood_core.errors import OODCoreError, TrainingDiverged
from ood_core.runtime import select_device
from ood_core.train import TrainConfig, train


def test_ce_digits_reaches_97_percent_test_accuracy():
    # the bar, from scratch with the default recipe (the shipped checkpoint is checked elsewhere)
    result = train("ce", "digits", TrainConfig(epochs=30, seed=0))
    assert result.meta["metrics"]["id_accuracy"] >= 0.97
    assert result.history[-1]["val_id_accuracy"] >= 0.97


def test_training_is_reproducible_for_a_seed_and_differs_across_seeds():
    a = train("ce", "toy2d", TrainConfig(epochs=2, seed=3), evaluate_after=False)
    b = train("ce", "toy2d", TrainConfig(epochs=2, seed=3), evaluate_after=False)
    c = train("ce", "toy2d", TrainConfig(epochs=2, seed=4), evaluate_after=False)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.model.state_dict().values(), c.model.state_dict().values()))
    assert a.history == b.history


def test_progress_callback_sees_every_step_and_epoch_end():
    seen = []
    train("ce", "toy2d", TrainConfig(epochs=2, batch_size=400, seed=0), progress=seen.append, evaluate_after=False)
    steps = math.ceil(1200 / 400)
    assert [(p.epoch, p.step) for p in seen] == [(e, s) for e in (1, 2) for s in range(1, steps + 1)]
    assert [p.val is not None for p in seen] == [s == steps for e in (1, 2) for s in range(1, steps + 1)]
    assert all(p.epochs == 2 and p.steps == steps and math.isfinite(p.loss) for p in seen)


def test_nan_loss_stops_with_a_clear_error():
    bench = ood_core.load_benchmark("toy2d")
    bench.train.x[5, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1"):
        train("ce", bench, TrainConfig(epochs=1, seed=0))


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(lr=float("nan")), dict(batch_size=0),
                                 dict(optimizer="lbfgs"), dict(weight_decay=-1.0)])
def test_bad_config_is_refused(bad):
    with pytest.raises(OODCoreError):
        train("ce", "toy2d", TrainConfig(**bad))


def test_method_task_mismatch_is_refused():
    with pytest.raises(OODCoreError, match="multiclass"):
        train("ce", "digit-canvases", TrainConfig(epochs=1))


def test_device_selection():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert select_device("auto").type == expected
    with pytest.raises(OODCoreError, match="device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(OODCoreError, match="no CUDA GPU"):
            select_device("cuda")


def test_metadata_records_what_was_done(tiny_digits_run):
    meta = tiny_digits_run.meta
    assert meta["method"] == "ce"
    assert meta["dataset"]["name"] == "digits" and meta["dataset"]["known"] == [0, 1, 2, 3, 4, 5]
    assert meta["train_config"]["epochs"] == 3 and meta["train_config"]["device_used"] == "cpu"
    assert set(meta["versions"]) >= {"torch", "numpy", "ood_core", "python"}
    assert len(meta["history"]) == 3
    assert set(meta["metrics"]["ood"]) == {"unknown", "real-photos", "real-textures", "real-faces", "uniform-noise",
                                           "gaussian-noise", "constant", "blobs", "textures"}


# --------------------------------------------------------------------------- lr schedules
def _lrs(cfg, bench="toy2d"):
    seen = []
    train("ce", bench, cfg, progress=seen.append, evaluate_after=False)
    return seen


def test_cosine_step_schedule_is_the_closed_form_per_step():
    cfg = TrainConfig(epochs=3, batch_size=400, seed=0, optimizer="sgd", lr=0.1, lr_min=0.002,
                      schedule="cosine-step")
    seen = _lrs(cfg)
    total = 3 * math.ceil(1200 / 400)  # 9 optimiser steps
    assert len(seen) == total
    # by hand: lr_min + (lr - lr_min)(1 + cos(pi t / T))/2 for the step t = 0 .. T-1
    expect = [0.002 + (0.1 - 0.002) * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    assert [p.lr for p in seen] == pytest.approx(expect, rel=1e-12)
    assert seen[0].lr == pytest.approx(0.1) and seen[-1].lr > 0.002


def test_cosine_epoch_schedule_is_unchanged_and_constant_within_an_epoch():
    seen = _lrs(TrainConfig(epochs=4, batch_size=400, seed=0, lr=0.01))
    by_epoch = {}
    for p in seen:
        by_epoch.setdefault(p.epoch, set()).add(p.lr)
    assert all(len(v) == 1 for v in by_epoch.values())
    expect = [0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]  # eta_min = 0
    assert [next(iter(by_epoch[e])) for e in (1, 2, 3, 4)] == pytest.approx(expect, rel=1e-12)
    assert all(p.stage == "train" for p in seen)


@pytest.mark.parametrize("bad", [dict(schedule="step"), dict(lr_min=-1e-3), dict(lr=1e-3, lr_min=1e-2)])
def test_bad_schedule_is_refused(bad):
    with pytest.raises(OODCoreError, match="schedule|lr_min"):
        TrainConfig(**bad).validate()


# --------------------------------------------------------------------------- init
@pytest.fixture(scope="module")
def toy_ce():
    return train("ce", "toy2d", TrainConfig(epochs=1, batch_size=400, seed=0), evaluate_after=False)


def _small(bench, n=64):
    import dataclasses

    from ood_core.data import Split

    return dataclasses.replace(bench, train=Split(bench.train.x[:n], bench.train.y[:n]))


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_init_from_model_state_dict_result_and_checkpoint_path_agree(toy_ce, tmp_path):
    path = tmp_path / "ce.pt"
    ood_core.save_checkpoint(path, toy_ce.model, toy_ce.meta)
    cfg = TrainConfig(epochs=1, batch_size=400, seed=5)
    runs = {name: train("ce", "toy2d", cfg, init=init, evaluate_after=False)
            for name, init in [("model", toy_ce.model), ("result", toy_ce), ("state_dict", toy_ce.model.state_dict()),
                               ("path", str(path))]}
    ref = _weights(runs["model"].model)
    for name, r in runs.items():
        for k, v in r.model.state_dict().items():
            assert torch.equal(v, ref[k]), (name, k)
    scratch = train("ce", "toy2d", cfg, evaluate_after=False)
    assert any(not torch.equal(v, ref[k]) for k, v in scratch.model.state_dict().items())  # init mattered
    assert "init" not in scratch.meta
    from ood_core.feature_cache import model_fingerprint

    fingerprint = model_fingerprint(toy_ce.model)
    assert {n: r.meta["init"]["source"] for n, r in runs.items()} == {
        "model": "model", "result": "model", "state_dict": "state_dict", "path": "checkpoint"}
    assert all(r.meta["init"]["weights"] == fingerprint for r in runs.values())
    assert runs["path"].meta["init"]["path"] == str(path) and runs["path"].meta["init"]["method"] == "ce"
    assert runs["result"].meta["init"]["seed"] == 0


def test_init_leaves_the_given_model_untouched(toy_ce):
    before = _weights(toy_ce.model)
    train("ce", "toy2d", TrainConfig(epochs=1, batch_size=400, seed=1), init=toy_ce.model, evaluate_after=False)
    assert all(torch.equal(v, before[k]) for k, v in toy_ce.model.state_dict().items())


def test_init_spec_dataset_and_type_mismatches_are_refused(toy_ce, tmp_path):
    from ood_core.models import build_model

    cfg = TrainConfig(epochs=1, batch_size=400, seed=0)
    wide = build_model("mlp", 4, (2,), feature_dim=toy_ce.model.spec["feature_dim"] + 3)
    with pytest.raises(OODCoreError, match=r"does not match.*feature_dim"):
        train("ce", "toy2d", cfg, init=wide, evaluate_after=False)
    with pytest.raises(OODCoreError, match="do not fit"):
        train("ce", "toy2d", cfg, init=wide.state_dict(), evaluate_after=False)
    with pytest.raises(OODCoreError, match="init must be"):
        train("ce", "toy2d", cfg, init=42, evaluate_after=False)
    with pytest.raises(OODCoreError, match="init: .*no such checkpoint"):
        train("ce", "toy2d", cfg, init=str(tmp_path / "missing.pt"), evaluate_after=False)
    # the same spec, but trained on other known classes: refused (a checkpoint or a result says so)
    digits, other = (_small(ood_core.load_benchmark("digits", known=k)) for k in (None, [0, 1, 2, 3, 4, 6]))
    r = train("ce", other, cfg, evaluate_after=False)
    assert r.model.spec == train("ce", digits, cfg, evaluate_after=False).model.spec
    ood_core.save_checkpoint(tmp_path / "other.pt", r.model, r.meta)
    for init in (r, str(tmp_path / "other.pt")):
        with pytest.raises(OODCoreError, match=r"known \[0, 1, 2, 3, 4, 6\].*not on this benchmark"):
            train("ce", digits, cfg, init=init, evaluate_after=False)
    partial = {**toy_ce.meta, "partial": {"epochs_done": 1, "epochs": 3}}
    ood_core.save_checkpoint(tmp_path / "partial.pt", toy_ce.model, partial)
    with pytest.raises(OODCoreError, match="partial"):
        train("ce", "toy2d", cfg, init=str(tmp_path / "partial.pt"), evaluate_after=False)
