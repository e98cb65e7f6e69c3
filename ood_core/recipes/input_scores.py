"""Scores computed from the inputs themselves (``requires_inputs = True``, ``cost = "inputs"``).

* ``odin``: Liang, Li, Srikant, "Enhancing The Reliability of Out-of-distribution Image
  Detection in Neural Networks", ICLR 2018 (arXiv 1706.02690).

The evaluator (:func:`ood_core.evaluate.evaluate`) calls :meth:`Score.score_inputs` with the
raw input tensor of each set. Convention: **high = ID**.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError, OODCoreError
from ..models import ModelOutput
from ..scores import MEMORY_BUDGET_BYTES, Score, check_finite_outputs, check_positive, register_score, row_chunks


def _logits(out) -> torch.Tensor:
    z = out.logits if hasattr(out, "logits") else out
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise OODCoreError("the model must return ModelOutput(features, logits) or an (N, K) logit tensor")
    return z


def _device_and_dtype(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Where and in which float type the model computes: those of its first parameter (else x's)."""
    p = next(iter(model.parameters()), None)
    if p is not None:
        return p.device, (p.dtype if p.is_floating_point() else torch.float32)
    return x.device, (x.dtype if x.is_floating_point() else torch.float32)


def input_gradient_bytes_per_row(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes one more input row costs in a forward + backward pass to the input (for :func:`row_chunks`).

    Measured, not guessed: the bytes of the tensors autograd saves for the backward pass
    (``torch.autograd.graph.saved_tensors_hooks``) are counted in a forward pass of one row
    and of two rows; their difference is the per-row part (the parameters, saved once per
    batch, cancel). The estimate is twice that (during the backward pass the gradient of an
    activation lives next to the saved activations) plus 6 copies of one input row (the copy
    moved to the device, the copy that requires grad, its gradient, its sign, the perturbed
    input, and one spare), i.e. ``2 * saved_per_row + 6 * numel(x_i) * itemsize``. For the
    1x8x8 SmallCNN this is ~173 KiB per row (its convolution activations dominate, not the
    256-byte input), so the default 256 MiB budget gives chunks of ~1,500 rows. ``x`` holds at
    least one row, on the model's device and in its dtype.
    """
    saved = []

    def pack(t):
        saved[-1] += t.numel() * t.element_size()
        return t

    def count(rows: torch.Tensor) -> int:
        saved.append(0)
        xr = rows.detach().clone().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _logits(model(xr))
        return saved[-1]

    row = x[:1]
    per_row = max(0, count(torch.cat([row, row])) - count(row))
    return int(2 * per_row + 6 * row.numel() * row.element_size())


@register_score
class ODIN(Score):
    """ODIN: max softmax at temperature T after an input step towards the prediction (Liang et al., ICLR 2018); high = ID.

    Liang, Li, Srikant, ICLR 2018 (arXiv 1706.02690), Sec. 3:

      S_k(x; T) = softmax(f(x) / T)_k,   yhat = argmax_k f_k(x),
      x'        = x - eps * sign(-grad_x log S_yhat(x; T)),
      score(x)  = max_k S_k(x'; T).

    Sign convention: -log S_yhat is the cross-entropy of the prediction at temperature T, so
    x' moves each input entry by eps *against* that loss gradient (a one-step FGSM that makes
    the model *more* confident in its prediction); ID inputs gain more confidence from it
    than OOD inputs, which is what separates them. ``sign(0) = 0``, as in the formula (an
    input entry with no influence on the loss is left alone; OpenOOD's binarisation
    ``ge(grad, 0)`` sends a zero gradient to +1 instead); x' is not clipped to the data range.

    Defaults: ``temperature`` T = 1000 (the paper's choice for all its experiments) and
    ``eps`` = 0.0014 (the magnitude of the official code's example and of OpenOOD's
    ``configs/postprocessors/odin.yml``, ``noise: 0.0014``; the paper tunes eps per model on
    held-out OOD data among 21 values in [0, 0.004]). pytorch-ood's ``odin`` function
    defaults to T = 1000 and eps = 0 (no perturbation). eps = 0 is the MSP at temperature
    T, i.e. ``msp`` with ``logit_scale = 1/T``.

    Input space: the gradient is taken with respect to the tensor the model is called with.
    Here that is the dataset's own representation: images in [0, 1] (the embedded sets and
    user images are scaled to [0, 1], no mean/std normalisation), 2-D points for ``toy2d``.
    Reference implementations feed mean/std-normalised images and divide the gradient's sign
    by the per-channel std, which is the same as a step of eps in [0, 1] pixel units; here no
    division is needed, the step is eps in the model's input units. (Should a model spec ever
    normalise inside the model, the gradient still flows to the raw input, so eps stays in
    raw input units.)

    Computation: the model in eval mode (the training flag restored on exit), gradients
    with ``torch.autograd.grad`` on the input only (nothing accumulates in the parameters'
    ``.grad``, their ``requires_grad`` is not touched), on the device and dtype of the
    model's parameters, in row chunks under :data:`ood_core.scores.MEMORY_BUDGET_BYTES`
    (``budget_bytes``; the per-row cost is measured by :func:`input_gradient_bytes_per_row`).
    Cost: two forward passes and one backward pass per sample. The final softmax is taken
    in float64 (at T = 1000 the probabilities all lie near 1/K and differ by ~1e-3 / K).
    """

    name = "odin"
    tasks = ("multiclass",)
    task_note = ("ODIN raises the largest probability of one softmax over the classes; a multi-label model "
                 "has an independent sigmoid per label, so there is no single predicted class to perturb towards")
    requires_inputs = True
    cost = "inputs"

    def __init__(self, temperature: float = 1000.0, eps: float = 0.0014, budget_bytes: int | None = None):
        self.temperature = check_positive(temperature, "odin temperature")
        self.eps = float(eps)
        if not (self.eps >= 0 and np.isfinite(self.eps)):
            raise OODCoreError(f"odin eps must be a finite number >= 0, got {eps!r}")
        self.budget_bytes = None if budget_bytes is None else int(budget_bytes)
        self.last_chunk_rows: int | None = None  # rows per chunk of the last call (for benchmarks/tests)

    def _chunk(self, model, xb: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        if self.eps > 0:
            xr = xb.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = _logits(model(xr))
                check_finite_outputs(ModelOutput(None, logits.detach()), self.name)
                log_p = torch.log_softmax(logits / t, dim=1)
                pred = logits.detach().argmax(dim=1, keepdim=True)
                # rows are independent in eval mode: the gradient of the sum is each row's own gradient
                (g,) = torch.autograd.grad(log_p.gather(1, pred).sum(), xr)
            # x - eps * sign(-grad log S_yhat) = x + eps * sign(grad log S_yhat)
            x_pert = xb + self.eps * torch.sign(g)
            del xr, logits, log_p, g
        else:
            x_pert = xb
        with torch.no_grad():
            logits = _logits(model(x_pert))
        check_finite_outputs(ModelOutput(None, logits), self.name, "perturbed-input ")
        return torch.softmax(logits.double() / t, dim=1).max(dim=1).values.cpu()

    def score_inputs(self, model, x) -> np.ndarray:
        x = torch.as_tensor(x)
        if x.shape[0] == 0:
            raise DataError("cannot compute ODIN scores of an empty set")
        device, dtype = _device_and_dtype(model, x)
        was_training = model.training
        model.eval()
        try:
            # (eps = 0 needs one no-grad forward pass only: the estimate is then generous)
            per_row = input_gradient_bytes_per_row(model, x[:1].to(device, dtype))
            budget = MEMORY_BUDGET_BYTES if self.budget_bytes is None else self.budget_bytes
            chunks = list(row_chunks(x.shape[0], per_row, budget, cache_blocks=False))  # model passes: as large as allowed
            self.last_chunk_rows = chunks[0].stop - chunks[0].start
            out = [self._chunk(model, x[c].to(device, dtype)) for c in chunks]
        finally:
            model.train(was_training)
        return torch.cat(out).numpy()

    def compute(self, out):
        raise OODCoreError("score 'odin' needs the inputs (it perturbs them): call score_inputs(model, x)")
