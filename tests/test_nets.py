"""Networks: embeddings against closed forms, shapes, gradients, smoothness, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dlai_diffusion import nets
from dlai_diffusion.nets import (
    ConditionalInstanceNorm2dPlus,
    EnergyCNN,
    EnergyMLP,
    GaussianFourierFeatures,
    ScoreMLP,
    UNet,
    count_parameters,
    sinusoidal_embedding,
    unet,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_matches_the_formula():
    t = torch.tensor([0.0, 1.0, 17.0, 999.0])
    dim = 10
    emb = sinusoidal_embedding(t, dim)
    assert emb.shape == (4, dim)
    for i, ti in enumerate(t.tolist()):
        for k in range(dim // 2):
            w = 10_000 ** (-k / (dim // 2))
            assert emb[i, k].item() == pytest.approx(math.sin(ti * w), abs=1e-4)
            assert emb[i, dim // 2 + k].item() == pytest.approx(math.cos(ti * w), abs=1e-4)


def test_sinusoidal_embedding_pads_odd_dims_and_takes_scalars():
    emb = sinusoidal_embedding(torch.tensor(3.0), 7)
    assert emb.shape == (1, 7)
    assert emb[0, -1] == 0
    assert sinusoidal_embedding(torch.arange(5), 8).dtype == torch.float32
    assert sinusoidal_embedding(torch.arange(5.0, dtype=torch.float64), 8).dtype == torch.float64
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="shape"):
        sinusoidal_embedding(torch.zeros(3, 2), 8)


def test_fourier_features_are_unit_circle_points_and_saved():
    ff = GaussianFourierFeatures(16, scale=3.0)
    out = ff(torch.linspace(-2, 2, 9))
    assert out.shape == (9, 16)
    torch.testing.assert_close(out[:, :8] ** 2 + out[:, 8:] ** 2, torch.ones(9, 8))
    assert "weight" in ff.state_dict() and count_parameters(ff) == 0
    wide = GaussianFourierFeatures(2000, scale=3.0)  # 1000 frequencies ~ N(0, 3^2)
    assert wide.weight.std().item() == pytest.approx(3.0, rel=0.1)


# ---------------------------------------------------------------- MLP


@pytest.mark.parametrize(
    "t", [0.5, torch.tensor(3.0), torch.arange(6.0), torch.arange(6.0)[:, None], 7]
)
def test_score_mlp_output_has_the_shape_of_x(t):
    net = ScoreMLP(dim=3, hidden=16, depth=2)
    x = torch.randn(6, 3)
    assert net(x, t).shape == (6, 3)


def test_score_mlp_options():
    x = torch.randn(5, 2)
    assert ScoreMLP(out_dim=1, hidden=8)(x, 0.1).shape == (5, 1)
    uncond = ScoreMLP(cond=False, hidden=8)
    torch.testing.assert_close(uncond(x), uncond(x, torch.rand(5)), rtol=0, atol=0)
    assert EnergyMLP(hidden=8)(x).shape == (5,)
    fourier = ScoreMLP(hidden=8, embedding="fourier")
    assert fourier(x, torch.rand(5).log()).shape == (5, 2)
    cond = ScoreMLP(hidden=8)
    assert not torch.equal(cond(x, 0.0), cond(x, 500.0)), "t must change the output"


def test_score_mlp_labels_and_null_label():
    net = ScoreMLP(hidden=16, n_classes=3)
    x = torch.randn(4, 2)
    torch.testing.assert_close(net(x, 1.0), net(x, 1.0, torch.full((4,), 3)))
    assert not torch.allclose(net(x, 1.0, torch.zeros(4, dtype=torch.long)), net(x, 1.0))
    with pytest.raises(ValueError, match="y must lie in 0..3"):
        net(x, 1.0, torch.full((4,), 4))


def test_score_mlp_rejects_bad_input():
    net = ScoreMLP(dim=2, hidden=8)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        net(torch.randn(4, 3), 0.0)
    with pytest.raises(TypeError, match="t is required"):
        net(torch.randn(4, 2))
    with pytest.raises(ValueError, match="t must be a scalar or hold one value per sample"):
        net(torch.randn(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="activation"):
        ScoreMLP(activation="sigmoidish")


def _divergence(f, x):
    """Sum of d f_i / d x_i per sample, differentiable (create_graph)."""
    out = f(x)
    return sum(
        torch.autograd.grad(out[:, i].sum(), x, create_graph=True)[0][:, i]
        for i in range(x.shape[1])
    )


def test_score_mlp_jacobian_trace_is_differentiable():
    """Exact score matching (Hyvärinen, 2005) back-propagates through tr(d s / d x)."""
    net = ScoreMLP(dim=2, hidden=16, depth=2).double()
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    trace = _divergence(lambda z: net(z, 0.3), x)
    reference = [
        torch.autograd.functional.jacobian(lambda z: net(z[None], 0.3)[0], x[i].detach()).trace()
        for i in range(5)
    ]
    torch.testing.assert_close(trace.detach(), torch.stack(reference))
    (trace.sum() + 0.5 * (net(x, 0.3) ** 2).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def _laplacian(energy, x):
    return _divergence(lambda z: torch.autograd.grad(energy(z).sum(), z, create_graph=True)[0], x)


@pytest.mark.parametrize("activation", ["silu", "softplus"])
def test_energy_mlp_is_twice_differentiable(activation):
    """The Laplacian of E by double backward equals central second differences."""
    energy = EnergyMLP(hidden=16, depth=2, activation=activation).double()
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    lap = _laplacian(energy, x).detach()
    h = 1e-4
    fd = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for i in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[i] = h
            fd += (energy(x + e) - 2 * energy(x) + energy(x - e)) / h**2
    torch.testing.assert_close(lap, fd, rtol=1e-4, atol=1e-5)
    assert lap.abs().max() > 1e-6


def test_relu_energy_has_zero_laplacian():
    """Why the default is smooth: a ReLU network is piecewise linear, so Delta E = 0."""
    energy = EnergyMLP(hidden=16, depth=2, activation="relu").double()
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert _laplacian(energy, x).abs().max() == 0


# ---------------------------------------------------------------- U-Net


DOCUMENTED_PARAMS = {
    ("tiny", 1): 40_489,
    ("tiny", 3): 40_779,
    ("small", 1): 1_062_497,
    ("small", 3): 1_063_651,
    ("base", 1): 14_540_161,
    ("base", 3): 14_543_619,
}


@pytest.mark.parametrize("preset, channels", sorted(DOCUMENTED_PARAMS))
def test_unet_parameter_counts_are_the_documented_ones(preset, channels):
    expected = DOCUMENTED_PARAMS[preset, channels]
    assert count_parameters(unet(preset, channels)) == expected
    assert f"{expected:,}" in unet.__doc__


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_unet_presets_keep_the_shape(channels, size):
    x = torch.randn(3, channels, size, size)
    for preset in ("tiny", "small"):
        net = unet(preset, channels, size)
        assert net(x, torch.tensor([0, 10, 999])).shape == x.shape


def test_unet_base_keeps_the_shape():
    net = unet("base", 3, 32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert net(x, 0.5).shape == x.shape


def test_unet_round_trips_odd_sizes():
    """28 -> 14 -> 7 -> 4 and back: upsampling follows the skip connection's size."""
    net = unet("tiny", 1, 28, channel_mults=(1, 1, 1, 1))
    x = torch.randn(2, 1, 28, 28)
    assert net(x, 3.0).shape == x.shape
    odd = UNet(2, channels=8, channel_mults=(1, 2), groups=4)
    assert odd(torch.randn(1, 2, 9, 13), 1).shape == (1, 2, 9, 13)


def test_unet_class_labels_and_null_label():
    net = unet("tiny", 1, 28, n_classes=10)
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([5.0, 50.0, 500.0])
    null = net(x, t, torch.full((3,), 10))
    torch.testing.assert_close(net(x, t), null, rtol=0, atol=0)
    assert not torch.allclose(net(x, t, torch.tensor([0, 1, 2])), null)
    with pytest.raises(ValueError, match="y must lie in 0..10"):
        net(x, t, torch.tensor([0, 1, 11]))
    with pytest.raises(TypeError, match="y must hold integer indices"):
        net(x, t, torch.zeros(3))


def test_unet_conditional_instance_norm_mode():
    net = unet("tiny", 3, 32, norm="cin", n_cond=10, attn_levels=(-1,))
    assert net.time_embedding is None
    x = torch.randn(2, 3, 32, 32)
    out = net(x, torch.tensor([0, 9]))
    assert out.shape == x.shape
    # perturb the conditioning of level 3 only: only a sample at level 3 may change
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, ConditionalInstanceNorm2dPlus):
                module.embed.weight[3].mul_(1.5)
    assert torch.equal(net(x, torch.tensor([0, 9])), out)
    assert not torch.allclose(net(x, torch.tensor([3, 9]))[0], out[0])
    with pytest.raises(TypeError, match="integer indices"):
        net(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="0..9"):
        net(x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="n_cond"):
        UNet(1, norm="cin")


def test_unet_rejects_bad_input():
    net = unet("tiny", 1, 28)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, H, W\)"):
        net(torch.randn(2, 3, 28, 28), 1.0)
    with pytest.raises(ValueError, match="28x28"):
        net(torch.randn(2, 1, 32, 32), 1.0)
    with pytest.raises(ValueError, match="preset"):
        unet("huge")
    with pytest.raises(ValueError, match="attn_heads"):
        UNet(1, channels=6, attn_heads=5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_classes=4, attn_levels=(-1,), mid_attn=True), dict(norm="cin", n_cond=5)],
    ids=["group+labels+attention", "cin"],
)
def test_gradient_reaches_every_unet_parameter(kwargs):
    net = unet("tiny", 1, 28, **kwargs)
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    if "n_cond" in kwargs:
        out = net(x, torch.tensor([0, 1, 2, 3]))
    else:
        out = net(x, torch.rand(4) * 1000, torch.tensor([0, 1, 2, 4]))
    (out**2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_unet_works_in_channels_last():
    net = unet("tiny", 3, 32, attn_levels=(-1,), mid_attn=True)
    x = torch.randn(2, 3, 32, 32)
    expected = net(x, 4.0)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), 4.0)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_attention_matches_a_direct_softmax_computation():
    attention = nets._Attention(8, heads=2, norm="group", groups=4, n_cond=None)
    x = torch.randn(2, 8, 3, 5)
    q, k, v = attention.qkv(attention.norm.norm(x)).flatten(2).chunk(3, dim=1)  # (N, C, HW)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[:, sl].transpose(1, 2) @ k[:, sl] / 2.0, dim=-1)
        heads.append((weights @ v[:, sl].transpose(1, 2)).transpose(1, 2))
    expected = x + attention.proj(torch.cat(heads, dim=1).reshape(2, 8, 3, 5))
    torch.testing.assert_close(attention(x, None), expected, rtol=1e-5, atol=1e-5)


def test_conditional_instance_norm_plus_follows_the_ncsn_formula():
    norm = ConditionalInstanceNorm2dPlus(channels=3, n_cond=4).double()
    with torch.no_grad():
        norm.embed.weight.normal_()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 3 + 1
    index = torch.tensor([2, 0])
    out = norm(x, index).detach().numpy()
    params = norm.embed.weight.detach().numpy()
    xn = x.numpy()
    for n in range(2):
        gamma, alpha, beta = np.split(params[index[n]], 3)
        mu = xn[n].mean(axis=(1, 2))
        s = np.sqrt(xn[n].var(axis=(1, 2)) + norm.eps)
        m, v = mu.mean(), np.sqrt(mu.var() + norm.eps)
        for k in range(3):
            z = gamma[k] * (xn[n, k] - mu[k]) / s[k] + beta[k] + alpha[k] * (mu[k] - m) / v
            np.testing.assert_allclose(out[n, k], z, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- energy CNN


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_energy_cnn_returns_one_energy_per_image(channels, size):
    net = EnergyCNN(channels, channels=8)
    x = torch.randn(5, channels, size, size, requires_grad=True)
    energy = net(x)
    assert energy.shape == (5,)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(5, channels + 1, size, size))


def test_energy_cnn_spectral_norm_bounds_each_layer():
    net = EnergyCNN(1, channels=4, spectral_norm=True, activation="leaky_relu")
    x = torch.randn(2, 1, 28, 28)
    for _ in range(50):  # power iterations run in training mode
        net(x)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 6
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
    assert net(x).shape == (2,)


def test_count_parameters_counts_trainable_scalars():
    layer = nn.Linear(3, 4)
    assert count_parameters(layer) == 16
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 12
    assert count_parameters(layer, trainable_only=False) == 16
    with pytest.raises(TypeError, match="module"):
        count_parameters(torch.zeros(3))
