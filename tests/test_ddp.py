"""Multi-process training: `torchrun --nproc_per_node 2 -m ood_core train` on CPU (gloo).

Two ranks split every global batch of the single-process run in halves, DDP averages the
gradients and BatchNorm uses the global batch's statistics (GlobalBatchNorm), so the update
is the single-process one up to float rounding. Rounding is not zero (the batch sums are
reduced in a different order) and 2 epochs of Adam amplify it where a gradient is near 0
(Adam's first steps move a weight by ~lr whatever the gradient's size): measured max abs
weight difference 3.5e-4 with Adam (1e-5 with SGD) after 2 epochs; the single-process run
itself moves by 4.7e-5 (SGD) just from 1 vs 2 CPU threads. Tolerance: 2e-3 (2 x lr),
while a run with another seed differs by > 0.05, so a wrong split (e.g. each rank training
on the whole batch, or on a different permutation) would not pass.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ood_core
from ood_core import distributed as ddp
from ood_core.errors import OODCoreError
from ood_core.train import recommended_config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torchrun(args, cwd, timeout=120):
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_process_training_matches_single_process(tmp_path, monkeypatch):
    out = tmp_path / "ddp.pt"
    proc = _torchrun(["-m", "ood_core", "train", "--method", "ce", "--dataset", "digits", "--epochs", "2",
                      "--seed", "0", "--device", "cpu", "--out", str(out), "--quiet"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved ") == 1  # rank 0 alone reports ...
    assert [p.name for p in tmp_path.iterdir()] == ["ddp.pt"]  # ... and writes the one checkpoint

    model, meta = ood_core.load_checkpoint(out)
    assert meta["train_config"]["world_size"] == 2
    assert len(meta["history"]) == 2 and "metrics" in meta

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    single = train("ce", "digits", recommended_config("ce", epochs=2, seed=0, device="cpu"))
    assert single.meta["train_config"]["world_size"] == 1
    diff = _max_diff(model.state_dict(), single.model.state_dict())
    assert diff < 2e-3, diff
    other = train("ce", "digits", recommended_config("ce", epochs=2, seed=1, device="cpu"), evaluate_after=False)
    assert _max_diff(other.model.state_dict(), single.model.state_dict()) > 25 * 2e-3
    # the training losses logged by rank 0 are the global-batch means of the single-process run
    for h_ddp, h_one in zip(meta["history"], single.history):
        assert h_ddp["train_loss"] == pytest.approx(h_one["train_loss"], rel=1e-3)
    assert meta["metrics"]["id_accuracy"] == pytest.approx(single.meta["metrics"]["id_accuracy"], abs=0.02)


def test_nan_on_one_rank_stops_every_rank(tmp_path):
    # sample 5 is NaN: it lands in one rank's half of a batch only; the all-reduced loss stops both
    script = tmp_path / "nan_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, ood_core
        from ood_core.errors import TrainingDiverged
        bench = ood_core.load_benchmark("toy2d")
        bench.train.x[5, 0] = float("nan")
        try:
            ood_core.train("ce", bench, ood_core.TrainConfig(epochs=2, seed=0, device="cpu"), evaluate_after=False)
        except TrainingDiverged as e:
            open(os.path.join({str(tmp_path)!r}, "stopped" + os.environ["RANK"]), "w").write(str(e))
    """))
    proc = _torchrun([str(script)], cwd=tmp_path, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = [(tmp_path / f"stopped{r}").read_text() for r in (0, 1)]
    assert msgs[0] == msgs[1] and "epoch 1, step" in msgs[0]


def test_single_process_needs_no_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    r = train("ce", "toy2d", ood_core.TrainConfig(epochs=1, seed=0, device="cpu"), evaluate_after=False)
    assert r.rank == 0 and r.meta["train_config"]["world_size"] == 1
    assert not torch.distributed.is_initialized()


def test_batches_too_small_to_split_are_refused():
    ctx = ddp.DistContext(world_size=2)
    ddp.check_batches(130, 64, ctx)  # last batch of 2: one sample per rank
    with pytest.raises(OODCoreError, match="cannot be split over 2"):
        ddp.check_batches(129, 64, ctx)  # last batch of 1
    with pytest.raises(OODCoreError):
        ddp.check_batches(100, 1, ctx)
    assert ddp.rank_slice(torch.arange(5), ddp.DistContext(world_size=2, rank=1)).tolist() == [3, 4]


def test_ib_centres_are_initialised_from_the_global_batch(tmp_path, monkeypatch):
    # IBLoss sets its centres at the first step; DDP never re-synchronises them, so each rank
    # must set them from the whole global batch, not from its own half
    script = tmp_path / "ib_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch, ood_core
        from ood_core import distributed as ddp
        from ood_core.methods import LossContext
        from ood_core.models import CentersHead, ModelOutput
        from ood_core.recipes.ib import IBLoss
        rank = os.environ["RANK"]
        dctx, _ = ddp.distributed_context(torch.device("cpu"))
        # the initialisation step alone: rank 0 gets samples 0-5 (no class 2), rank 1 samples 6-10
        torch.manual_seed(0)
        z, y = torch.randn(11, 5), torch.tensor([0, 0, 1, 0, 1, 1, 1, 2, 2, 0, 2])
        model = torch.nn.Module()
        model.head = CentersHead(5, 4)  # class 3 is in no batch: its centre stays
        before = model.head.centers.detach().clone()
        local = ddp.rank_slice(torch.arange(11), dctx)
        out = ModelOutput(z[local], model.head(z[local]))
        IBLoss()(out, y[local], LossContext(z[local], model, 1, 1))
        # a whole training run (train() uses the process group made above)
        r = ood_core.train("ib", "digits", ood_core.TrainConfig(epochs=2, seed=0, device="cpu"),
                           evaluate_after=False)
        torch.save({{"z": z, "y": y, "before": before, "init": model.head.centers.detach(),
                    "trained": r.model.head.centers.detach()}}, os.path.join({str(tmp_path)!r}, f"ib{{rank}}.pt"))
        ddp.shutdown(ddp.DistContext(owns_group=True))
    """))
    proc = _torchrun([str(script)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"ib{r}.pt") for r in (0, 1))

    z, y = r0["z"].double().numpy(), r0["y"].numpy()
    expected = r0["before"].double().clone()
    for k in range(3):  # class means of the whole batch of 11, by hand
        expected[k] = torch.from_numpy(z[y == k].sum(0) / (y == k).sum())
    for r in (r0, r1):
        torch.testing.assert_close(r["init"].double(), expected, rtol=0, atol=1e-6)

    torch.testing.assert_close(r0["trained"], r1["trained"], rtol=0, atol=0)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    single = train("ib", "digits", ood_core.TrainConfig(epochs=2, seed=0, device="cpu"), evaluate_after=False)
    diff = (r0["trained"].double() - single.model.head.centers.detach().double()).abs().max().item()
    # measured 4.7e-6 (rounding of the split sums); with centres set per rank: 0.67
    assert diff < 1e-4, diff
