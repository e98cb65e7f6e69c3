"""L2-normalised features during training, feature norm at test time.

Haas, Yolland, Rabus, "Exploring Simple, High Quality Out-of-Distribution Detection with L2
Normalization" (arXiv 2306.04072, TMLR 2024).

Training: logits = W z/||z||_2 + b (the ``l2norm`` head of :mod:`ood_core.models`) with plain
softmax cross-entropy (:class:`ood_core.methods.CrossEntropy`); nothing else. Because the
logits do not depend on ||z||, the loss gradient with respect to z is orthogonal to z
(d/dz f(z/||z||) = (I - z_hat z_hat^T) grad / ||z||): the norm is never trained by the loss
directly and is free to grow with how much the backbone "recognises" the input.

Test: the normalisation is dropped and the score is ||z||_2 (the ``feature_norm`` score,
high = ID), which the paper finds far less useful for a network trained without the
normalisation. The paper trains a ResNet-18 on CIFAR-10 for 60 epochs.
"""
from __future__ import annotations

from ..methods import CrossEntropy, Method, register_method

register_method(Method(
    name="l2norm",
    description="cross-entropy on L2-normalised features (W z/||z|| + b); feature-norm score ||z||",
    task="multiclass", head="l2norm", make_loss=CrossEntropy, loss_params={},
    scores=("feature_norm", "msp", "energy"), baseline="ce",
    paper="Haas, Yolland, Rabus, TMLR 2024 (arXiv 2306.04072)",
))
