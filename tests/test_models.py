"""build_model: backbones x heads, head geometry, spectral normalisation."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ood_core.errors import OODCoreError, UnknownNameError
from ood_core.models import BACKBONES, HEADS, LinearHead, ModelOutput, build_model, default_arch, head_weight

K = 5
CONFIGS = [
    ("smallcnn", (1, 8, 8), 4, 128),
    ("smallcnn", (1, 16, 16), 4, 128),
    ("smallcnn", (1, 28, 28), 4, 128),
    ("mlp", (2,), 6, 32),
    ("resnet18", (3, 32, 32), 2, 512),
]


def _input(shape, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch, shape, n, d", CONFIGS, ids=lambda v: str(v))
def test_build_model_output_shapes(arch, shape, n, d, head):
    torch.manual_seed(0)
    model = build_model(arch, K, shape, head=head).eval()
    with torch.no_grad():
        out = model(_input(shape, n))
    assert isinstance(out, ModelOutput)
    width = 256 if head == "mlp-bn" else d  # features = the input of the final linear layer
    assert out.features.shape == (n, width)
    assert out.logits.shape == (n, K)
    assert torch.isfinite(out.features).all() and torch.isfinite(out.logits).all()
    assert model.spec["arch"] == arch and model.spec["head"] == head and model.spec["feature_dim"] == d


def test_feature_dim_override_and_spec_roundtrip():
    torch.manual_seed(0)
    model = build_model("smallcnn", 3, (1, 8, 8), head="cosine", feature_dim=48, cosine_scale=7.0)
    assert model.spec["feature_dim"] == 48
    clone = build_model(**model.spec)
    clone.load_state_dict(model.state_dict())
    x = _input((1, 8, 8), 3)
    with torch.no_grad():
        a, b = model.eval()(x), clone.eval()(x)
    assert a.features.shape == (3, 48)
    assert torch.allclose(a.logits, b.logits) and torch.allclose(a.features, b.features)


@pytest.mark.parametrize("scale", [16.0, 2.5])
def test_cosine_head_bounded_and_is_scaled_cosine(scale):
    torch.manual_seed(1)
    model = build_model("mlp", K, (2,), head="cosine", cosine_scale=scale)
    z = torch.randn(50, 32) * 10
    with torch.no_grad():
        logits = model.head(z)
        w = model.head.weight
        expected = scale * (z @ w.T) / (z.norm(dim=1, keepdim=True) * w.norm(dim=1)[None])
    assert logits.abs().max() <= scale + 1e-4
    assert torch.allclose(logits, expected, atol=1e-4)
    # aligning a feature with a weight row gives the maximal logit, scale
    with torch.no_grad():
        assert model.head(3.0 * w[2:3])[0, 2] == pytest.approx(scale, rel=1e-5)


def test_l2norm_head_ignores_feature_scale():
    torch.manual_seed(2)
    model = build_model("smallcnn", K, (1, 8, 8), head="l2norm")
    z = torch.randn(10, 128)
    with torch.no_grad():
        a, b = model.head(z), model.head(5 * z)
        expected = torch.nn.functional.linear(z / z.norm(dim=1, keepdim=True), model.head.weight, model.head.bias)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, expected, atol=1e-5)
    # control: the linear head does depend on the scale
    linear = build_model("smallcnn", K, (1, 8, 8), head="linear")
    with torch.no_grad():
        assert not torch.allclose(linear.head(z), linear.head(5 * z), atol=1e-3)


def test_features_are_not_normalised_for_l2norm_head():
    torch.manual_seed(3)
    model = build_model("mlp", K, (2,), head="l2norm").eval()
    with torch.no_grad():
        out = model(torch.randn(20, 2) * 3)
    norms = out.features.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))


def _sigma_max(w: torch.Tensor) -> float:
    """Largest singular value of ``w`` reshaped to (out, -1) (what torch's spectral_norm normalises)."""
    w = w.detach().double().reshape(w.shape[0], -1)
    if w.shape[0] <= 64:
        return float(torch.linalg.matrix_norm(w, ord=2))
    # same number, faster for the wide ResNet convs: sqrt of the top eigenvalue of W W^T
    return float(torch.linalg.eigvalsh(w @ w.T)[-1].sqrt())


def _conv_sigmas(module):
    # m.weight is the normalised weight, as used in forward
    return [_sigma_max(m.weight) for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch, shape, n", [("smallcnn", (1, 8, 8), 8), ("resnet18", (3, 32, 32), 2)])
def test_spectral_norm_convs(arch, shape, n):
    torch.manual_seed(4)
    model = build_model(arch, K, shape, spectral_norm=True)
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert not parametrize.is_parametrized(model.head)
    assert not any(parametrize.is_parametrized(m) for m in model.backbone.modules()
                   if isinstance(m, (nn.BatchNorm2d, nn.Linear)))
    model.train()
    with torch.no_grad():
        for i in range(4):  # each train-mode forward runs one power iteration per conv
            out = model(_input(shape, n, seed=i))
        assert torch.isfinite(out.logits).all()
        # some ResNet convs have close top singular values, so power iteration converges
        # slowly; reading a weight in train mode runs one more iteration (no forward needed)
        for _ in range(20):
            for m in convs:
                m.weight
    model.eval()
    with torch.no_grad():
        sig = _conv_sigmas(model.backbone)
    assert len(sig) == len(convs)
    assert max(sig) <= 1.05, sig
    assert min(sig) >= 0.99, sig  # normalised, not merely shrunk (power iteration underestimates)
    if arch == "smallcnn":  # control: without spectral norm the raw conv weights are not at norm ~1
        raw = build_model(arch, K, shape, spectral_norm=False)
        assert max(abs(s - 1.0) for s in _conv_sigmas(raw.backbone)) > 0.1


def test_spectral_norm_linear_option():
    torch.manual_seed(5)
    plain = build_model("mlp", K, (2,), spectral_norm=True)
    linears = [m for m in plain.backbone.modules() if isinstance(m, nn.Linear)]
    assert linears and not any(parametrize.is_parametrized(m) for m in linears)
    sn = build_model("mlp", K, (2,), spectral_norm=True, spectral_norm_linear=True)
    linears = [m for m in sn.backbone.modules() if isinstance(m, nn.Linear)]
    assert linears and all(parametrize.is_parametrized(m, "weight") for m in linears)
    assert not parametrize.is_parametrized(sn.head)
    sn.train()
    with torch.no_grad():
        for _ in range(4):
            sn(torch.randn(16, 2))
    sn.eval()
    with torch.no_grad():
        for m in linears:
            assert float(torch.linalg.matrix_norm(m.weight, ord=2)) == pytest.approx(1.0, abs=0.05)
    assert sn.spec["spectral_norm"] and sn.spec["spectral_norm_linear"]


def test_unknown_arch_and_head_list_names():
    with pytest.raises(UnknownNameError) as err:
        build_model("vgg99", K, (1, 8, 8))
    for name in BACKBONES:
        assert name in str(err.value)
    with pytest.raises(UnknownNameError) as err:
        build_model("smallcnn", K, (1, 8, 8), head="arcface")
    for name in HEADS:
        assert name in str(err.value)


def test_default_arch():
    assert default_arch((2,)) == "mlp"
    assert default_arch((3, 32, 32)) == "resnet18"
    assert default_arch((1, 8, 8)) == "smallcnn"


def test_mlp_bn_head_is_linear_bn_relu_linear_and_its_final_weight_classifies_the_features():
    torch.manual_seed(6)
    model = build_model("smallcnn", K, (1, 16, 16), head="mlp-bn", head_hidden=16)
    lin, bn, relu = model.neck
    assert (type(lin), type(bn), type(relu)) == (nn.Linear, nn.BatchNorm1d, nn.ReLU)
    assert lin.weight.shape == (16, 128) and bn.num_features == 16
    assert type(model.head) is LinearHead and head_weight(model).shape == (K, 16)
    x = _input((1, 16, 16), 6)
    model.train()
    with torch.no_grad():
        model(x)  # move the BN1d running statistics away from (0, 1)
        model(_input((1, 16, 16), 6, seed=1))
    model.eval()
    with torch.no_grad():
        out = model(x)
        z = model.backbone(x)
    # independent computation of the head in eval mode: running statistics, then ReLU, then W h + b
    u = z @ lin.weight.T + lin.bias
    h = ((u - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias).clamp_min(0)
    torch.testing.assert_close(out.features, h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, h @ model.head.weight.T + model.head.bias, rtol=1e-5, atol=1e-6)
    assert model.spec["head_hidden"] == 16 and model.spec["feature_dim"] == 128
    clone = build_model(**model.spec)
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x).logits, out.logits)


def test_spectral_norm_never_touches_the_mlp_bn_head():
    sn = build_model("mlp", K, (2,), head="mlp-bn", spectral_norm=True, spectral_norm_linear=True)
    assert all(parametrize.is_parametrized(m, "weight") for m in sn.backbone.modules() if isinstance(m, nn.Linear))
    assert not any(parametrize.is_parametrized(m) for m in (*sn.neck.modules(), sn.head))


def test_smallcnn_norm_none_has_conv_biases_and_no_batchnorm():
    model = build_model("smallcnn", K, (1, 8, 8), norm="none")
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.spec["norm"] == "none"
    plain = build_model("smallcnn", K, (1, 8, 8))
    convs = [m for m in plain.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs) and plain.spec["norm"] == "batch"
    assert build_model("mlp", K, (2,)).spec["norm"] == "none" and build_model(**model.spec).spec == model.spec


def test_spec_without_the_new_keys_builds_the_old_model():
    # checkpoints written before ``norm`` / ``head_hidden`` existed: BN SmallCNN, no neck
    old = dict(arch="smallcnn", num_classes=K, input_shape=[1, 16, 16], head="linear", feature_dim=128,
               spectral_norm=True, spectral_norm_linear=False, cosine_scale=16.0)
    keys = list(build_model(**old).state_dict())
    assert not any(k.startswith("neck") for k in keys)
    assert "backbone.net.0.1.running_mean" in keys and "head.weight" in keys


def test_bad_norm_and_head_hidden_are_clear_errors():
    with pytest.raises(OODCoreError, match="not available for the resnet18"):
        build_model("resnet18", K, (3, 32, 32), norm="none")
    with pytest.raises(UnknownNameError, match="norm"):
        build_model("smallcnn", K, (1, 8, 8), norm="group")
    with pytest.raises(OODCoreError, match="head_hidden"):
        build_model("smallcnn", K, (1, 8, 8), head="mlp-bn", head_hidden=0)


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 5, 7, 9), (1, 2, 2, 3), (4, 1, 16, 16)])
def test_maxpool2x2_without_autograd_gives_max_pool2d_values_exactly(shape):
    from ood_core.models import MaxPool2x2

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).relu()  # ReLU zeros: ties inside windows
    x[0, 0, 0, :2] = 1.5  # a positive tie
    x[-1, -1, -1, -1] = float("nan")
    with torch.no_grad():
        got = MaxPool2x2()(x)
        want = nn.functional.max_pool2d(x, 2)
    assert got.shape == want.shape
    assert torch.equal(torch.nan_to_num(got, nan=-7.0), torch.nan_to_num(want, nan=-7.0))
    assert torch.equal(got.isnan(), want.isnan())
    with pytest.raises(RuntimeError):  # too small for a 2x2 window: max_pool2d's own error
        with torch.no_grad():
            MaxPool2x2()(torch.zeros(1, 1, 1, 4))


def test_maxpool2x2_with_autograd_is_max_pool2d_so_gradients_and_jacobians_are_unchanged():
    from ood_core.models import MaxPool2x2

    x = torch.tensor([[[[2.0, 2.0, 0.0, 1.0], [1.0, 0.5, 1.0, 0.0]]]])  # a tie at 2.0 and at 1.0
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    (MaxPool2x2()(a) * torch.tensor([3.0, 5.0])).sum().backward()
    (nn.functional.max_pool2d(b, 2) * torch.tensor([3.0, 5.0])).sum().backward()
    assert torch.equal(a.grad, b.grad) and a.grad.sum() == 8.0  # the whole gradient at one position per window
    jac = torch.func.jacrev(lambda t: MaxPool2x2()(t))(x)
    assert torch.equal(jac, torch.func.jacrev(lambda t: nn.functional.max_pool2d(t, 2))(x))
    with torch.no_grad():  # forward mode is not switched off by no_grad: still max_pool2d's derivative
        fwd = torch.func.jacfwd(lambda t: MaxPool2x2()(t))(x)
        assert torch.equal(fwd, torch.func.jacfwd(lambda t: nn.functional.max_pool2d(t, 2))(x))
        import torch.autograd.forward_ad as fwAD
        with fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.ones_like(x))
            want = fwAD.unpack_dual(nn.functional.max_pool2d(dual, 2)).tangent
            assert torch.equal(fwAD.unpack_dual(MaxPool2x2()(dual)).tangent, want)


def test_smallcnn_outputs_are_the_same_with_and_without_autograd():
    torch.manual_seed(0)
    model = build_model("smallcnn", 5, (1, 8, 8)).eval()
    x = torch.rand(64, 1, 8, 8)
    x[:8] = 0.0  # blank images: constant activations, ties in every pooling window
    with torch.no_grad():
        fast = model(x)
    slow = model(x)
    assert torch.equal(fast.features, slow.features.detach()) and torch.equal(fast.logits, slow.logits.detach())
