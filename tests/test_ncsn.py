"""NCSN: noise levels, the weighted multi-level loss, annealed Langevin dynamics, the wrappers.

References are exact: the perturbed scores of Gaussian mixtures (``toy``), closed forms for a
Gaussian (the optimal DSM loss, Tweedie's posterior mean), scipy's pairwise distances, and the
update of Algorithm 1 of Song & Ermon (2019) replayed by hand with the same random numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.distance import pdist

from dlai_diffusion import langevin, ncsn, nets, runs, toy
from dlai_diffusion.ncsn import (
    NoiseConditionalScore,
    annealed_langevin,
    check_sigmas,
    geometric_sigmas,
    mixture_score,
    ncsn_loss,
    sigma_max_from_data,
    tweedie_denoise,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def heavy_mode_share(x: torch.Tensor) -> float:
    """Share of points on the side of (5, 5) of the line x + y = 0 between the two modes."""
    return (x.sum(1) > 0).double().mean().item()


# --------------------------------------------------------------------------- Figure 3


def test_annealed_langevin_with_exact_scores_recovers_the_mode_weights():
    """Song & Ermon (2019), Fig. 3c: 0.8 N((5,5), I) + 0.2 N((-5,-5), I), 4000 chains from
    U[-8, 8]^2, sigmas geometric from 20 to 1 (L = 10), T = 100 steps per level, eps = 0.1,
    exact perturbed scores. The heavy mode must hold 0.80 +- 0.03 of the samples (binomial
    std 0.006; the finite T leaves a bias of about -0.015, measured over seeds), and each
    mode must have the perturbed law at sigma_L = 1: mean +-(5, 5), variance 2."""
    mixture = toy.two_mode_mixture()
    g = gen(0)
    x0 = 16 * torch.rand(4000, 2, generator=g) - 8
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    x = annealed_langevin(mixture_score(mixture), x0, sigmas, 100, 0.1, generator=g)
    assert abs(heavy_mode_share(x) - 0.8) < 0.03
    heavy = x[x.sum(1) > 0]
    assert torch.allclose(heavy.mean(0), torch.tensor([5.0, 5.0]), atol=0.15)
    assert torch.allclose(heavy.var(0), torch.tensor([2.0, 2.0]), rtol=0.15)


def test_plain_langevin_with_the_exact_score_misses_the_mode_weights():
    """Fig. 3b: plain Langevin with the exact data score, 2000 chains from U[-8, 8]^2, 1000
    steps of size 0.1. Each chain falls into the mode of its half of the box and never
    crosses the empty region between them: about half of the samples per mode, not 0.8."""
    mixture = toy.two_mode_mixture()
    g = gen(1)
    x0 = 16 * torch.rand(2000, 2, generator=g) - 8
    x = langevin.langevin(mixture.score, x0, 0.1, 1000, generator=g)
    assert abs(heavy_mode_share(x) - 0.8) > 0.1
    assert abs(heavy_mode_share(x) - heavy_mode_share(x0)) < 0.03  # no chain changed sides


# --------------------------------------------------------------------------- noise levels


def test_geometric_sigmas_are_decreasing_with_a_constant_ratio_and_exact_ends():
    sigmas = geometric_sigmas(50.0, 0.01, 12)
    assert sigmas.shape == (12,) and sigmas.dtype == F64
    assert sigmas[0].item() == 50.0 and sigmas[-1].item() == 0.01
    ratios = sigmas[1:] / sigmas[:-1]
    expected = (0.01 / 50.0) ** (1 / 11)
    assert torch.allclose(ratios, torch.full_like(ratios, expected), rtol=1e-12)
    assert torch.equal(geometric_sigmas(2, 1, 2), torch.tensor([2.0, 1.0], dtype=F64))
    assert geometric_sigmas(1.0, 0.1, 3, dtype=torch.float32).dtype == torch.float32
    assert torch.allclose(geometric_sigmas(100, 1, 3), torch.tensor([100, 10, 1], dtype=F64))


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((1.0, 1.0, 5), ValueError, "sigma_max must be > sigma_min"),
        ((0.5, 1.0, 5), ValueError, "sigma_max must be > sigma_min"),
        ((1.0, 0.0, 5), ValueError, "sigma_min"),
        ((1.0, -0.1, 5), ValueError, "sigma_min"),
        ((math.inf, 0.1, 5), ValueError, "sigma_max"),
        ((1.0, 0.1, 1), ValueError, "n_levels"),
        ((1.0, 0.1, 2.5), TypeError, "n_levels"),
        ((1.0, 0.1, True), TypeError, "n_levels"),
        (("1", 0.1, 5), TypeError, "sigma_max"),
    ],
)
def test_geometric_sigmas_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        geometric_sigmas(*args)


@pytest.mark.parametrize(
    "sigmas, match",
    [([1.0, 2.0], "decreasing"), ([1.0, 1.0], "decreasing"), ([1.0, 0.0], "> 0"), ([], "empty")],
)
def test_check_sigmas_names_the_problem(sigmas, match):
    with pytest.raises(ValueError, match=match):
        check_sigmas(sigmas)
    with pytest.raises(ValueError, match=match):
        annealed_langevin(lambda x, s: -x, torch.zeros(3, 2), sigmas, 1, 0.1)


def test_sigma_max_from_data_is_the_largest_pairwise_distance():
    x = torch.randn(300, 3, generator=gen(2), dtype=F64)
    expected = pdist(x.numpy()).max()
    assert sigma_max_from_data(x) == pytest.approx(expected, rel=1e-9)
    assert sigma_max_from_data(x, block_size=7) == pytest.approx(expected, rel=1e-9)
    subset = sigma_max_from_data(x, max_points=50, generator=gen(3))
    assert 0 < subset <= expected + 1e-9
    images = torch.randn(40, 1, 4, 4, generator=gen(4), dtype=F64)
    assert sigma_max_from_data(images) == pytest.approx(pdist(images.flatten(1).numpy()).max())
    with pytest.raises(ValueError, match="at least 2"):
        sigma_max_from_data(x[:1])
    with pytest.raises(ValueError, match="floating"):
        sigma_max_from_data(torch.ones(5, 2, dtype=torch.long))


# --------------------------------------------------------------------------- the loss


def linear_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A made-up noise-conditional score, -x / (1 + sigma^2), to check the arithmetic."""
    return -x / (1 + sigma.reshape(-1, 1) ** 2)


def test_ncsn_loss_equals_a_hand_computation_at_fixed_levels_and_noise():
    sigmas = torch.tensor([3.0, 1.0, 0.2], dtype=F64)
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0], [2.0, 2.0]], dtype=F64)
    z = torch.tensor([[0.3, -1.0], [1.2, 0.4], [-0.7, 0.1], [0.0, -2.0]], dtype=F64)
    levels = torch.tensor([0, 2, 1, 2])
    expected = []
    for xn, zn, i in zip(x, z, levels.tolist(), strict=True):
        s = sigmas[i].item()
        x_tilde = xn + s * zn
        score = -x_tilde / (1 + s**2)
        target = (xn - x_tilde) / s**2  # notes Eq. 26
        expected.append(s**2 * 0.5 * ((score - target) ** 2).sum())
    expected = torch.stack(expected)
    got = ncsn_loss(linear_score, x, sigmas, levels=levels, noise=z, reduction="none")
    assert torch.allclose(got, expected, rtol=1e-12)
    mean = ncsn_loss(linear_score, x, sigmas, levels=levels, noise=z)
    assert mean.item() == pytest.approx(expected.mean().item(), rel=1e-12)
    total = ncsn_loss(linear_score, x, sigmas, levels=levels, noise=z, reduction="sum")
    assert total.item() == pytest.approx(expected.sum().item(), rel=1e-12)


def test_ncsn_loss_draws_levels_uniformly_and_reproducibly():
    sigmas = geometric_sigmas(10.0, 0.1, 5)
    x = torch.zeros(20_000, 2, dtype=F64)
    seen = []

    def recording_score(x_tilde, sigma):
        seen.append(sigma)
        return torch.zeros_like(x_tilde)

    first = ncsn_loss(recording_score, x, sigmas, generator=gen(5))
    second = ncsn_loss(recording_score, x, sigmas, generator=gen(5))
    assert first.item() == second.item()
    counts = torch.stack([(seen[0] == s).sum() for s in sigmas]).double() / len(x)
    assert torch.allclose(counts, torch.full((5,), 0.2, dtype=F64), atol=0.015)
    # with a zero score each sample contributes 0.5 ||z||^2, whose mean is d / 2 = 1
    assert first.item() == pytest.approx(1.0, abs=0.03)


def test_sigma_squared_weighting_makes_every_level_count_alike_for_the_exact_score():
    """For x ~ N(0, s^2 I) in d dimensions the exact score of q_sigma is -x / (s^2 + sigma^2)
    and the weighted DSM loss at that optimum is d / 2 * s^2 / (s^2 + sigma^2), between
    d / 4 and d / 2 for sigma <= s: of order one at every level. Without the weight the same
    losses range over 1 / sigma^2, four orders of magnitude here."""
    s, d, n = 1.0, 2, 40_000
    sigmas = geometric_sigmas(1.0, 0.01, 5)
    gaussian = toy.GaussianMixture([[0.0, 0.0]], s, dtype=F64)
    score = mixture_score(gaussian)
    x = gaussian.sample(n, gen(6))
    weighted, unweighted = [], []
    for i, sigma in enumerate(sigmas.tolist()):
        levels = torch.full((n,), i)
        loss = ncsn_loss(score, x, sigmas, generator=gen(7 + i), levels=levels).item()
        assert loss == pytest.approx(d / 2 * s**2 / (s**2 + sigma**2), rel=0.03)
        weighted.append(loss)
        unweighted.append(loss / sigma**2)
    assert max(weighted) / min(weighted) < 2.1
    assert max(unweighted) / min(unweighted) > 1e3


def test_the_exact_perturbed_score_minimises_the_ncsn_loss():
    """DSM's minimiser at every level is the perturbed score (Vincent, 2011; Eq. 25): scaling
    the exact mixture score up or down by 20% raises the loss (same levels, same noise)."""
    mixture = toy.two_mode_mixture(dtype=F64)
    score = mixture_score(mixture)
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    x = mixture.sample(20_000, gen(8))
    levels = torch.randint(0, 10, (len(x),), generator=gen(9))
    z = torch.randn(x.shape, generator=gen(10), dtype=F64)

    def loss_of(factor):
        return ncsn_loss(lambda y, sig: factor * score(y, sig), x, sigmas, levels=levels, noise=z)

    best = loss_of(1.0).item()
    assert best < loss_of(0.8).item() and best < loss_of(1.2).item()


def test_ncsn_loss_rejects_bad_levels():
    sigmas = [1.0, 0.5]
    x = torch.zeros(3, 2)
    for levels in (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 0.0])):
        with pytest.raises(ValueError, match="levels"):
            ncsn_loss(linear_score, x, sigmas, levels=levels)
    with pytest.raises(ValueError, match="reduction"):
        ncsn_loss(linear_score, x, sigmas, reduction="max")


# --------------------------------------------------------------------------- sampling


def test_annealed_langevin_takes_the_steps_of_algorithm_1():
    """Replay x + (alpha_i / 2) s + sqrt(alpha_i) z, alpha_i = eps sigma_i^2 / sigma_L^2, with
    the same random numbers (a twin generator) and the score -x / (1 + sigma^2)."""
    sigmas = [2.0, 1.0, 0.5]
    eps, steps = 0.01, 3
    x0 = torch.randn(5, 2, generator=gen(11), dtype=F64)
    calls = []

    def score(x, sigma):
        return -x / (1 + sigma**2)

    out = annealed_langevin(score, x0, sigmas, steps, eps, generator=gen(12), callback=calls.append)
    twin, x = gen(12), x0.clone()
    for sigma in sigmas:
        alpha = eps * sigma**2 / sigmas[-1] ** 2
        for _ in range(steps):
            z = torch.randn(x.shape, generator=twin, dtype=F64)
            x = x + alpha / 2 * score(x, sigma) + math.sqrt(alpha) * z
    assert torch.allclose(out, x, rtol=1e-12, atol=1e-12)
    assert [(c["level"], c["step"], c["sigma"]) for c in calls] == [
        (i, k, s) for i, s in enumerate(sigmas) for k in range(steps)
    ]
    assert torch.equal(calls[-1]["x"], out)
    assert torch.equal(annealed_langevin(score, x0, sigmas, 0, eps), x0)


def test_tweedie_denoise_is_the_gaussian_posterior_mean():
    """x ~ N(m, s^2 I), x_tilde = x + sigma z: E[x | x_tilde] = (s^2 x_tilde + sigma^2 m) /
    (s^2 + sigma^2), which is x_tilde + sigma^2 grad log q_sigma(x_tilde)."""
    m, s, sigma = torch.tensor([1.0, -2.0], dtype=F64), 0.7, 1.3
    gaussian = toy.GaussianMixture(m[None], s, dtype=F64)
    x_tilde = torch.randn(100, 2, generator=gen(13), dtype=F64) * 3
    expected = (s**2 * x_tilde + sigma**2 * m) / (s**2 + sigma**2)
    got = tweedie_denoise(mixture_score(gaussian), x_tilde, sigma)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_final_denoise_is_one_tweedie_step_at_the_smallest_level():
    mixture = toy.two_mode_mixture(dtype=F64)
    score = mixture_score(mixture)
    sigmas = geometric_sigmas(5.0, 0.5, 4)
    x0 = torch.randn(50, 2, generator=gen(14), dtype=F64)
    plain = annealed_langevin(score, x0, sigmas, 5, 0.05, generator=gen(15))
    denoised = annealed_langevin(score, x0, sigmas, 5, 0.05, final_denoise=True, generator=gen(15))
    assert torch.allclose(denoised, tweedie_denoise(score, plain, 0.5), rtol=1e-12)


def test_annealed_langevin_rejects_bad_arguments():
    score = mixture_score(toy.two_mode_mixture())
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="eps"):
        annealed_langevin(score, x, [1.0, 0.5], 2, 0.0)
    with pytest.raises(ValueError, match="n_steps_each"):
        annealed_langevin(score, x, [1.0, 0.5], -1, 0.1)
    with pytest.raises(ValueError, match="x must be"):
        annealed_langevin(score, torch.zeros(4, 2, dtype=torch.long), [1.0, 0.5], 1, 0.1)


def test_mixture_score_takes_one_level_per_sample():
    mixture = toy.two_mode_mixture(dtype=F64)
    x = torch.randn(6, 2, generator=gen(16), dtype=F64) * 4
    sigma = torch.tensor([0.5, 2.0, 0.5, 7.0, 2.0, 0.5], dtype=F64)
    got = mixture_score(mixture)(x, sigma)
    for n in range(len(x)):
        expected = mixture.perturb(sigma[n].item()).score(x[n])
        assert torch.allclose(got[n], expected, rtol=1e-12)


# --------------------------------------------------------------------------- networks


class Echo(torch.nn.Module):
    """Returns its conditioning input broadcast to the shape of x (to see what it is fed)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, c=None):
        c = torch.ones(len(x)) if c is None else c
        return self.weight * c.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)).expand_as(x)


def test_noise_conditional_score_maps_sigma_to_the_conditioning_and_scales():
    sigmas = geometric_sigmas(4.0, 0.25, 5)  # 4, 2, 1, 0.5, 0.25
    x = torch.zeros(3, 2)
    sigma = torch.tensor([4.0, 1.0, 0.25])
    log_model = NoiseConditionalScore(Echo(), sigmas, "log_sigma", scale_output=False)
    assert torch.allclose(log_model(x, sigma)[:, 0], sigma.log())
    index_model = NoiseConditionalScore(Echo(), sigmas, "index", scale_output=False)
    assert torch.equal(index_model(x, sigma)[:, 0], torch.tensor([0.0, 2.0, 4.0]))
    with pytest.raises(ValueError, match="noise levels"):
        index_model(x, 0.3)
    scaled = NoiseConditionalScore(Echo(), sigmas, None, scale_output=True)
    assert torch.allclose(scaled(x, sigma)[:, 0], 1 / sigma)
    assert torch.equal(scaled(x, 2.0), scaled(x, torch.full((3,), 2.0)))
    assert torch.equal(index_model.sigmas, sigmas.float())
    with pytest.raises(ValueError, match="conditioning"):
        NoiseConditionalScore(Echo(), sigmas, "sigma")


@pytest.mark.parametrize("norm", ["cin", "group"])
def test_ncsn_unet_scores_images_at_every_level(norm):
    torch.manual_seed(0)
    sigmas = geometric_sigmas(2.0, 0.05, 4)
    model = ncsn.ncsn_unet(sigmas, "tiny", in_channels=3, image_size=8, norm=norm)
    assert isinstance(model.net, nets.UNet) and model.net.norm == norm
    x = torch.randn(4, 3, 8, 8)
    loss = ncsn_loss(model, x, sigmas, generator=gen(17))
    loss.backward()
    assert torch.isfinite(loss) and model.net.conv_in.weight.grad is not None
    with torch.no_grad():
        out = annealed_langevin(model, x, sigmas, 1, 1e-4, final_denoise=True)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_ncsn_mlp_learns_the_exact_scores_of_a_mixture():
    """A short training run on the two-mode mixture brings the learned s(x, sigma) within a
    fraction of the exact perturbed score's size, at points drawn from q_sigma."""
    from dlai_diffusion.train import train

    torch.manual_seed(0)
    mixture = toy.two_mode_mixture()
    sigmas = geometric_sigmas(20.0, 1.0, 5)
    model = ncsn.ncsn_mlp(sigmas, hidden=64, depth=2)
    train(
        model,
        lambda m, batch, g: ncsn_loss(m, batch, sigmas, g),
        lambda g: mixture.sample(256, g),
        300,
        lr=5e-3,
        generator=gen(18),
        progress=False,
    )
    exact = mixture_score(mixture)
    for sigma in sigmas.tolist():
        x = mixture.perturb(sigma).sample(2000, gen(19))
        with torch.no_grad():
            error = (model(x, sigma) - exact(x, sigma)).norm(dim=1).pow(2).mean()
        size = exact(x, sigma).norm(dim=1).pow(2).mean()
        assert error < 0.1 * size, (sigma, error.item(), size.item())


# --------------------------------------------------------------------------- command line


def test_cli_model_trains_samples_and_measures_a_toy_run(tmp_path):
    spec = runs.get_model("ncsn")
    assert spec.data == "swiss_roll"
    metrics = runs.train_run("ncsn", tmp_path, steps=30, options={"n_steps_each": 3}, n_eval=200)
    assert metrics["model"] == "ncsn" and metrics["sliced_wasserstein"]["value"] > 0
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()


def test_cli_model_trains_on_images(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAI_FAST", "1")  # the shipped MNIST subset, offline
    metrics = runs.train_run(
        "ncsn",
        tmp_path,
        data="mnist",
        steps=2,
        batch_size=8,
        options={"n_steps_each": 1, "preset": "tiny"},
        n_eval=20,
    )
    assert metrics["data"] == "mnist" and metrics["classifier_fid"] > 0
    assert torch.load(tmp_path / "samples.pt", weights_only=True).shape == (20, 1, 28, 28)
