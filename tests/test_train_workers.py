"""TrainConfig.workers: batches gathered by DataLoader worker processes, same training as in-process."""
from __future__ import annotations

import multiprocessing

import pytest
import torch

import ood_core
from ood_core.cli import main
from ood_core.errors import OODCoreError
from ood_core.train import TrainConfig, train


def _run(workers: int, **kwargs):
    steps = []
    result = train("ce", "digits", TrainConfig(epochs=2, seed=0, workers=workers), evaluate_after=False,
                   progress=lambda p: steps.append(p.loss), **kwargs)
    return result, steps


def test_workers_train_bit_identical_weights_and_close_their_processes():
    ref, ref_steps = _run(0)
    run, steps = _run(2)
    assert multiprocessing.active_children() == []  # the workers were shut down with the run
    a, b = ref.model.state_dict(), run.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert steps == ref_steps and len(steps) > 2
    assert run.history == ref.history
    assert run.meta["train_config"]["workers"] == 2 and ref.meta["train_config"]["workers"] == 0


def test_a_run_stopped_mid_epoch_shuts_its_workers_down():
    class Stop(Exception):
        pass

    def stop(p):
        if p.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train("ce", "digits", TrainConfig(epochs=1, seed=0, workers=1), evaluate_after=False, progress=stop)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_worker_counts_are_refused(bad):
    with pytest.raises(OODCoreError, match="must be a whole number in 0..64"):
        train("ce", "toy2d", TrainConfig(epochs=1, workers=bad))


def test_cli_train_with_workers(tmp_path, capsys):
    out = tmp_path / "w.pt"
    assert main(["train", "--dataset", "toy2d", "--epochs", "1", "--workers", "1", "--out", str(out), "--quiet"]) == 0
    assert "saved" in capsys.readouterr().out
    _, meta = ood_core.load_checkpoint(out)
    assert meta["train_config"]["workers"] == 1
    assert main(["train", "--dataset", "toy2d", "--epochs", "1", "--workers", "-1", "--out", str(out),
                 "--quiet"]) == 2
    assert "must be a whole number in 0..64" in capsys.readouterr().err
