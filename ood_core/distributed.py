"""Multi-process data-parallel training under ``torchrun`` (used by :func:`ood_core.train.train`).

``torchrun --nproc_per_node N -m ood_core train ...`` starts N copies of the CLI with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set; :func:`distributed_context` sees them,
initialises ``torch.distributed`` (nccl on CUDA, gloo on CPU) and the training loop then:

* draws the same seeded permutation on every rank, so every step's *global* batch of
  ``batch_size`` samples is exactly the single-process batch, and gives each rank a
  contiguous near-equal share of it (:func:`rank_slice`). This is what
  ``torch.utils.data.DistributedSampler`` does for a dataset, done per global batch instead:
  the loop slices in-memory tensors, and a per-epoch ``DistributedSampler`` would regroup
  the samples into different batches, so the result would only match single-process
  training statistically. Split per global batch, the gradient DDP averages is the
  single-process gradient up to float rounding (each rank's mean loss is weighted by its
  share of the batch, so an uneven last batch is exact too);
* wraps the model in ``DistributedDataParallel`` and makes BatchNorm use the statistics of
  the whole global batch: ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` on CPU
  (``SyncBatchNorm`` refuses CPU tensors);
* all-reduces each step's loss, so a NaN/Inf stops every rank at the same step;
* validates, reports progress, evaluates and writes the checkpoint on rank 0 only.

Losses that couple the batch beyond a per-sample mean (outlier batches, which every rank
draws identically; terms that call the model again) are averaged over ranks: correct in
expectation, not bit-for-bit the single-process run.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn

from .errors import OODCoreError


@dataclasses.dataclass
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def distributed_context(device: torch.device) -> tuple[DistContext, torch.device]:
    """The context from torchrun's variables (world size 1 without them) and the rank's device."""
    world = env_world_size()
    if world <= 1:
        return DistContext(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise OODCoreError(f"multi-process training runs on cuda or cpu, not {device.type}")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistContext(dist.get_world_size(), dist.get_rank(), local_rank, owns), device


def rank_slice(idx: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous share of a global batch of indices."""
    if not ctx.enabled:
        return idx
    return torch.tensor_split(idx, ctx.world_size)[ctx.rank]


def check_batches(n: int, batch_size: int, ctx: DistContext) -> None:
    """Every rank needs at least one sample of every global batch (BatchNorm, DDP)."""
    if not ctx.enabled:
        return
    smallest = min(batch_size, n) if n % batch_size == 0 or n < batch_size else n % batch_size
    if smallest < ctx.world_size:
        raise OODCoreError(f"a global batch of {smallest} sample(s) cannot be split over {ctx.world_size} "
                           f"processes; change --batch-size (now {batch_size}) or --nproc_per_node")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum over ranks of the output's."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all ranks.

    A CPU stand-in for ``SyncBatchNorm``: per-channel sums, sums of squares and counts are
    all-reduced with autograd (:class:`_AllReduceSum`), so the forward
    and the gradient are those of one BatchNorm over the whole batch. Same parameters and
    buffers (so the same state_dict) as ``BatchNorm1d/2d``; in eval mode it is plain BatchNorm.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x):
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        local_n = x.numel() // x.shape[1]
        stats = torch.cat([x.sum(dims), (x * x).sum(dims),
                           torch.tensor([float(local_n)], dtype=x.dtype, device=x.device)])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm (CUDA) or :class:`GlobalBatchNorm` (CPU), weights kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats).to(device)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks of the process group (a copy); ``t`` itself in a single process.

    For code that is not handed the :class:`DistContext` (a loss): it asks ``torch.distributed``
    whether a multi-process group is running. No gradient flows through it. Every rank must call it.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def average_grads(params, ctx: DistContext) -> None:
    """Average the gradients of parameters that DDP does not own (e.g. a loss's own)."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(ctx.world_size)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
