"""L2-normalised-feature training (Haas et al., arXiv 2306.04072): the head, why the norm is
left free by the loss (autograd), the feature-norm score's sign, and the registered method."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ood_core.methods import METHODS, CrossEntropy, applicable_scores
from ood_core.models import L2NormHead, ModelOutput, build_model
from ood_core.scores import make_score


def test_l2norm_method_registered():
    m = METHODS["l2norm"]
    assert m.head == "l2norm" and m.baseline == "ce" and m.make_loss is CrossEntropy
    assert m.scores[0] == "feature_norm" and set(m.scores) == {"feature_norm", "msp", "energy"}
    assert applicable_scores(m)[:3] == list(m.scores)
    assert m.loss_params == {}


def test_head_is_linear_in_unit_features_and_scale_invariant():
    torch.manual_seed(0)
    head = L2NormHead(6, 4).double()
    z = torch.randn(10, 6, dtype=torch.float64)
    zn = z / torch.sqrt((z**2).sum(1, keepdim=True))
    torch.testing.assert_close(head(z), zn @ head.weight.T + head.bias)
    torch.testing.assert_close(head(z * 7.5), head(z))


def test_loss_gradient_is_orthogonal_to_the_features():
    """The CE loss does not see ||z||: its gradient w.r.t. z has no radial component."""
    torch.manual_seed(1)
    head = L2NormHead(5, 3).double()
    z = (torch.randn(8, 5, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.randint(0, 3, (8,))
    loss = CrossEntropy()(ModelOutput(z, head(z)), y)
    (g,) = torch.autograd.grad(loss, z)
    radial = (g * z.detach()).sum(1) / z.detach().norm(dim=1)
    assert g.abs().max() > 1e-4  # a real gradient ...
    torch.testing.assert_close(radial, torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)  # ... tangential only
    # the plain linear head, in contrast, does push on the norm
    lin = torch.nn.Linear(5, 3).double()
    (g2,) = torch.autograd.grad(F.cross_entropy(lin(z), y), z)
    assert ((g2 * z.detach()).sum(1)).abs().max() > 1e-4


def test_feature_norm_sign_on_l2_model_outputs():
    model = build_model("mlp", 3, (2,), head="l2norm", feature_dim=8)
    x = torch.randn(5, 2)
    out = model(x)
    s = make_score("feature_norm")(out)
    np.testing.assert_allclose(s, np.linalg.norm(out.features.detach().numpy(), axis=1), rtol=1e-5)
    big = ModelOutput(out.features * 3, out.logits)  # same logits, larger norm -> more ID
    assert (make_score("feature_norm")(big) > s).all()


def test_l2norm_trains_and_checkpoint_round_trips(tmp_path):
    import ood_core

    r = ood_core.train("l2norm", "toy2d", ood_core.TrainConfig(epochs=2, seed=0), evaluate_after=False)
    assert isinstance(r.model.head, L2NormHead)
    path = tmp_path / "l2.pt"
    ood_core.save_checkpoint(path, r.model, r.meta)
    model, meta = ood_core.load_checkpoint(path)
    assert meta["method"] == "l2norm" and model.spec["head"] == "l2norm"
    x = ood_core.load_benchmark("toy2d").test.x[:16]
    with torch.no_grad():
        torch.testing.assert_close(model(x).features, r.model(x).features)
