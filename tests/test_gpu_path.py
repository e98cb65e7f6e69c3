"""The GPU input path of the training loop (TrainConfig.amp, channels_last, pinned copies),
exercised on the CPU where it can be (bf16 autocast, channels_last) and on CUDA when present."""
from __future__ import annotations

import pytest
import torch

import ood_core
from ood_core.errors import OODCoreError


def _train(**cfg):
    return ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=2, seed=0, **cfg), evaluate_after=False)


@pytest.fixture(scope="module")
def fp32_run():
    return _train(device="cpu")


@pytest.fixture(scope="module")
def other_seed_gap(fp32_run):
    """How far apart two fp32 runs from different initialisations end: the scale against which
    "the same training, other rounding" must look small (early training amplifies rounding)."""
    return _max_weight_diff(ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=2, seed=1, device="cpu"),
                                           evaluate_after=False), fp32_run)


def _max_weight_diff(a, b) -> float:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].is_floating_point())


def test_bf16_autocast_trains_close_to_fp32_but_not_identical(fp32_run, other_seed_gap):
    seen = []

    def watch(epoch, model):  # the loss of a bf16 forward pass differs from the fp32 one
        seen.append(epoch)

    run = ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=2, seed=0, device="cpu", amp="bf16"),
                         evaluate_after=False, epoch_end=watch)
    assert seen == [1, 2] and run.meta["train_config"]["amp"] == "bf16"
    diff = _max_weight_diff(run, fp32_run)
    # autocast really ran (bf16 rounding moved the weights), yet training followed the fp32 path
    assert 0 < diff < 0.25 * other_seed_gap, (diff, other_seed_gap)
    losses, losses32 = [h["train_loss"] for h in run.history], [h["train_loss"] for h in fp32_run.history]
    assert losses != losses32 and all(abs(a - b) < 0.05 * b for a, b in zip(losses, losses32))
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_channels_last_changes_the_layout_not_the_result(fp32_run, other_seed_gap):
    layouts = []

    def watch(epoch, model):
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        layouts.append(conv.weight.is_contiguous(memory_format=torch.channels_last))

    run = ood_core.train("ce", "digits", ood_core.TrainConfig(epochs=2, seed=0, device="cpu", channels_last=True),
                         evaluate_after=False, epoch_end=watch)
    assert layouts == [True, True]
    # same arithmetic in another summation order (oneDNN's NHWC kernels): rounding-level differences,
    # which early training amplifies, far below the gap between two initialisations
    assert _max_weight_diff(run, fp32_run) < 0.1 * other_seed_gap


def test_fp16_on_cpu_says_what_to_use_instead():
    with pytest.raises(OODCoreError, match="amp='bf16'"):
        _train(device="cpu", amp="fp16")
    with pytest.raises(OODCoreError, match="amp must be one of"):
        ood_core.TrainConfig(amp="fp8").validate()


def test_cli_passes_the_gpu_options(tmp_path, capsys):
    from ood_core.cli import main

    out = tmp_path / "bf16.pt"
    assert main(["train", "--method", "ce", "--dataset", "digits", "--epochs", "1", "--amp", "bf16",
                 "--channels-last", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    _, meta = ood_core.load_checkpoint(out)
    assert meta["train_config"]["amp"] == "bf16" and meta["train_config"]["channels_last"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_on_cuda(amp):
    run = _train(device="cuda", amp=amp, channels_last=True)
    assert run.meta["train_config"]["device_used"].startswith("cuda")
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_gpu_check_script_is_valid_and_stops_without_a_gpu():
    """benchmarks/gpu_check.sh parses, names only options its benchmarks have, and on a machine
    without CUDA says so and stops instead of timing the CPU."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for bench in ("train_speed.py", "geometry_speed.py", "app_latency.py"):
        line = next(ln for ln in text.splitlines() if f"benchmarks/{bench}" in ln)
        block = text[text.index(line):].split("\nstep ")[0]
        helptext = subprocess.run([sys.executable, str(root / "benchmarks" / bench), "--help"], capture_output=True,
                                  text=True, timeout=120).stdout
        for option in re.findall(r"(--[a-z][a-z-]+)", block):
            assert option in helptext, (bench, option)
    if torch.cuda.is_available():
        return
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300, cwd=root,
                         env={**os.environ, "PY": sys.executable})
    assert res.returncode == 1 and "no CUDA device visible to torch" in res.stdout, res.stdout + res.stderr
