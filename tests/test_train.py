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
    assert set(meta["metrics"]["ood"]) == {"unknown", "uniform-noise", "gaussian-noise", "constant", "blobs", "textures"}
