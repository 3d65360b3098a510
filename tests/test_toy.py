"""Tests of dlai_diffusion.toy: the exact Gaussian-mixture ground truth and the 2D data sets.

References used: autograd (score), scipy.stats.multivariate_normal (densities, Bayes),
quadrature on a grid (normalisation), Monte-Carlo moments and Monte-Carlo convolution
integrals (sampling and noised mixtures). Monte-Carlo checks use a fixed seed and a tolerance
of 5 estimated standard errors, so a correct implementation passes with overwhelming
probability while a wrong weight, mean or variance fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dlai_diffusion import toy
from dlai_diffusion._utils import draw_categorical, draw_normal, draw_uniform
from dlai_diffusion.toy import DATASETS, GaussianMixture

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_mixture(d: int, k: int = 3, seed: int = 0, dtype=F64) -> GaussianMixture:
    """K components with spread-out means, unequal stds in [0.3, 1.8] and unequal weights."""
    g = gen(seed)
    means = 3.0 * torch.randn(k, d, generator=g, dtype=F64)
    stds = 0.3 + 1.5 * torch.rand(k, generator=g, dtype=F64)
    weights = 0.1 + torch.rand(k, generator=g, dtype=F64)
    return GaussianMixture(means, stds, weights / weights.sum(), dtype=dtype)


def scipy_log_joint(gm: GaussianMixture, x: torch.Tensor) -> np.ndarray:
    """log w_k + log N(x; m_k, s_k^2 I) from scipy, shape (N, K)."""
    x = x.double().numpy()
    columns = [
        math.log(w) + multivariate_normal(m, s**2 * np.eye(gm.dim)).logpdf(x).reshape(len(x))
        for m, s, w in zip(gm.means.tolist(), gm.stds.tolist(), gm.weights.tolist(), strict=True)
    ]
    return np.stack(columns, axis=1)


def within_standard_errors(estimate, exact, se, n_se=5.0):
    """|estimate - exact| <= n_se * se, elementwise, with a readable failure message."""
    estimate, exact, se = (torch.as_tensor(v, dtype=F64) for v in (estimate, exact, se))
    gap = (estimate - exact).abs()
    assert (gap <= n_se * se).all(), f"estimate {estimate} vs exact {exact}, se {se}"


# --------------------------------------------------------------------------- densities


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_equals_autograd_of_log_prob(d, seed):
    gm = random_mixture(d, k=4, seed=seed)
    near = gm.sample(32, gen(seed + 10))
    broad = 5.0 * torch.randn(32, d, generator=gen(seed + 20), dtype=F64)
    x = torch.cat([near, broad]).requires_grad_(True)
    (autograd,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    score = gm.score(x.detach())
    assert score.shape == (64, d)
    torch.testing.assert_close(score, autograd, rtol=0, atol=1e-5)
    # far tighter in practice: both are exact up to rounding
    torch.testing.assert_close(score, autograd, rtol=1e-9, atol=1e-9)


def test_float32_stable_far_from_modes():
    gm64 = random_mixture(2, k=3, seed=3)
    gm32 = gm64.to(dtype=torch.float32)
    x = torch.tensor([[1e3, 1e3], [-1e3, 1e3], [1e3, -2e3]])
    assert x.dtype == torch.float32
    # naive log(sum(exp(.))) underflows to -inf here; logsumexp must not
    assert torch.isfinite(gm32.log_prob_components(x)).all()
    log_prob = gm32.log_prob(x)
    score = gm32.score(x)
    assert log_prob.dtype == score.dtype == torch.float32
    assert torch.isfinite(log_prob).all() and torch.isfinite(score).all()
    assert torch.isfinite(gm32.responsibilities(x)).all()
    torch.testing.assert_close(log_prob.double(), gm64.log_prob(x.double()), rtol=1e-5, atol=0)
    torch.testing.assert_close(score.double(), gm64.score(x.double()), rtol=1e-4, atol=0)
    # so far out, the widest component is responsible for everything
    widest = int(gm64.stds.argmax())
    pull = (gm64.means[widest] - x.double()) / gm64.stds[widest] ** 2
    torch.testing.assert_close(score.double(), pull, rtol=1e-4, atol=0)


def test_log_prob_integrates_to_one_on_a_grid():
    gm = GaussianMixture([[-1.5, 0.5], [1.0, -1.0], [2.0, 2.0]], [0.4, 0.8, 0.6], [0.2, 0.5, 0.3])
    h = 0.02
    axis = torch.arange(-10.0, 10.0 + h / 2, h, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1)
    mass = gm.to(dtype=F64).log_prob(grid).exp().sum() * h**2
    assert abs(mass.item() - 1.0) < 1e-3


@pytest.mark.parametrize("d", [1, 2, 3])
def test_log_prob_matches_scipy(d):
    gm = random_mixture(d, k=3, seed=d)
    x = 4.0 * torch.randn(50, d, generator=gen(d), dtype=F64)
    reference = logsumexp(scipy_log_joint(gm, x), axis=1)
    np.testing.assert_allclose(gm.log_prob(x).numpy(), reference, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.energy(x).numpy(), -reference, rtol=1e-10, atol=1e-10)


def test_batch_shapes_and_single_point():
    gm = random_mixture(2, k=3)
    x = torch.randn(3, 4, 2, generator=gen(0), dtype=F64)
    flat = x.reshape(12, 2)
    assert gm.log_prob(x).shape == (3, 4)
    assert gm.score(x).shape == (3, 4, 2)
    assert gm.responsibilities(x).shape == (3, 4, 3)
    torch.testing.assert_close(gm.score(x).reshape(12, 2), gm.score(flat))
    assert gm.log_prob(flat[0]).shape == ()
    torch.testing.assert_close(gm.log_prob(flat[0]), gm.log_prob(flat)[0])


def test_responsibilities_follow_bayes():
    gm = random_mixture(2, k=4, seed=5)
    x = 3.0 * torch.randn(40, 2, generator=gen(5), dtype=F64)
    post = gm.responsibilities(x)
    torch.testing.assert_close(post.sum(-1), torch.ones(40, dtype=F64))
    joint = np.exp(scipy_log_joint(gm, x))  # w_k N(x; m_k, s_k^2 I), by hand
    np.testing.assert_allclose(post.numpy(), joint / joint.sum(1, keepdims=True), atol=1e-12)


def test_responsibilities_average_to_the_weights():
    # E_x[p(k | x)] = w_k: an independent check that sampling and Bayes agree
    gm = random_mixture(2, k=3, seed=6)
    post = gm.responsibilities(gm.sample(50_000, gen(6)))
    n = post.shape[0]
    within_standard_errors(post.mean(0), gm.weights, post.std(0) / math.sqrt(n))


def test_zero_weight_component_is_ignored():
    gm = GaussianMixture([[0.0, 0.0], [3.0, 0.0]], [1.0, 0.5], [1.0, 0.0], dtype=F64)
    single = GaussianMixture([[0.0, 0.0]], 1.0, dtype=F64)
    x = torch.randn(20, 2, generator=gen(0), dtype=F64)
    torch.testing.assert_close(gm.log_prob(x), single.log_prob(x))
    torch.testing.assert_close(gm.score(x), single.score(x))
    assert (gm.responsibilities(x)[:, 1] == 0).all()
    _, labels = gm.sample(1000, gen(0), return_labels=True)
    assert (labels == 0).all()


# --------------------------------------------------------------------------- sampling


def test_sample_reproduces_weights_means_and_covariances():
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    means = [[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]]
    gm = GaussianMixture(means, [0.5, 1.0, 1.5], weights, dtype=F64)
    n = 100_000
    x, labels = gm.sample(n, gen(0), return_labels=True)
    assert x.shape == (n, 2) and x.dtype == F64
    assert labels.shape == (n,) and labels.dtype == torch.long
    # component counts: binomial(n, w_k), 5 standard deviations
    counts = torch.bincount(labels, minlength=3).double()
    within_standard_errors(counts, n * weights, (n * weights * (1 - weights)).sqrt())
    for k in range(3):
        xk = x[labels == k]
        nk, s2 = len(xk), gm.stds[k].item() ** 2
        within_standard_errors(xk.mean(0), gm.means[k], math.sqrt(s2 / nk))
        cov = torch.cov(xk.T)
        # sample variance has sd s^2 sqrt(2 / n); a sample covariance of independent
        # coordinates has sd s^2 / sqrt(n)
        within_standard_errors(cov.diagonal(), [s2, s2], s2 * math.sqrt(2 / nk))
        within_standard_errors(cov[0, 1], 0.0, s2 / math.sqrt(nk))
    check_moments(x, gm.mean(), gm.covariance())


def check_moments(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    """Sample mean and covariance against exact ones, 5 empirical standard errors."""
    n = len(samples)
    within_standard_errors(samples.mean(0), mean, samples.std(0) / math.sqrt(n))
    centred = samples - mean
    products = centred[:, :, None] * centred[:, None, :]
    within_standard_errors(products.mean(0), cov, products.std(0) / math.sqrt(n))


def test_sample_reproducible_and_leaves_global_rng_alone():
    gm = random_mixture(3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = gm.sample(100, gen(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, gm.sample(100, gen(7)))
    assert not torch.allclose(a, gm.sample(100, gen(8)))


def test_draw_helpers_follow_the_generator():
    assert torch.equal(draw_normal((3, 2), gen(0)), torch.randn(3, 2, generator=gen(0)))
    assert torch.equal(
        draw_uniform(5, gen(0), dtype=F64), torch.rand(5, generator=gen(0), dtype=F64)
    )
    assert draw_normal(4, gen(0)).device == torch.device("cpu")
    labels = draw_categorical(torch.tensor([0.0, 1.0, 0.0]), 50, gen(0))
    assert labels.dtype == torch.long and (labels == 1).all()
    with pytest.raises(TypeError, match="generator"):
        draw_normal(3, generator=0)


@CUDA
def test_cpu_generator_drives_cuda_sampling():
    gm = random_mixture(2, dtype=torch.float32)
    on_gpu = gm.to("cuda").sample(1000, gen(0))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), gm.sample(1000, gen(0)))
    # evaluations follow the input's device
    assert gm.score(on_gpu).device.type == "cuda"
    torch.testing.assert_close(gm.log_prob(on_gpu).cpu(), gm.log_prob(on_gpu.cpu()))
    torch.testing.assert_close(draw_normal(7, gen(1), device="cuda").cpu(), draw_normal(7, gen(1)))


# --------------------------------------------------------------------------- noised mixtures

# (alpha, sigma): variance exploding (alpha = 1) and variance preserving (alpha_bar = 0.3)
NOISE = [(1.0, 0.7), (math.sqrt(0.3), math.sqrt(0.7))]


@pytest.mark.parametrize(("alpha", "sigma"), NOISE)
def test_noised_mixture_matches_monte_carlo_moments(alpha, sigma):
    gm = random_mixture(2, k=3, seed=11)
    noised = gm.perturb(sigma) if alpha == 1.0 else gm.diffuse(alpha, sigma)
    n = 100_000
    x, labels = gm.sample(n, gen(11), return_labels=True)
    y = alpha * x + sigma * torch.randn(n, 2, generator=gen(12), dtype=F64)
    torch.testing.assert_close(noised.weights, gm.weights)
    for k in range(3):
        yk = y[labels == k]
        nk, s2 = len(yk), noised.stds[k].item() ** 2
        within_standard_errors(yk.mean(0), noised.means[k], math.sqrt(s2 / nk))
        within_standard_errors(yk.var(0), [s2, s2], s2 * math.sqrt(2 / nk))
    check_moments(y, noised.mean(), noised.covariance())


@pytest.mark.parametrize(("alpha", "sigma"), NOISE)
def test_noised_log_prob_is_the_convolution_density(alpha, sigma):
    # q(y) = E_{x ~ p}[N(y; alpha x, sigma^2 I)], estimated by Monte Carlo over x
    gm = random_mixture(2, k=3, seed=13)
    noised = gm.diffuse(alpha, sigma)
    x = gm.sample(200_000, gen(13))
    points = torch.cat([alpha * gm.means, alpha * gm.means.mean(0, keepdim=True)])
    squared = (points[:, None, :] - alpha * x[None]).pow(2).sum(-1)
    kernel = torch.exp(-0.5 * squared / sigma**2) / (2 * math.pi * sigma**2)
    estimate, se = kernel.mean(1), kernel.std(1) / math.sqrt(x.shape[0])
    exact = noised.log_prob(points).exp()
    assert (se < 0.02 * exact).all()  # the check has power: 5 se is at most a 10% error
    within_standard_errors(estimate, exact, se)


def test_perturb_and_diffuse_algebra():
    gm = random_mixture(3, k=2, seed=14)
    same = gm.perturb(0.0)
    assert torch.equal(same.means, gm.means) and torch.equal(same.stds, gm.stds)
    assert torch.equal(same.weights, gm.weights)
    assert torch.equal(gm.diffuse(1.0, 0.0).stds, gm.stds)
    # x + a z1 + b z2 has the law of x + hypot(a, b) z
    twice = gm.perturb(0.3).perturb(torch.tensor(0.4))
    torch.testing.assert_close(twice.stds, gm.perturb(0.5).stds)
    # a2 (a1 x + s1 z1) + s2 z2 has the law of a1 a2 x + hypot(a2 s1, s2) z
    a1, s1, a2, s2 = 0.9, 0.2, 0.7, 0.5
    composed = gm.diffuse(a1, s1).diffuse(a2, s2)
    direct = gm.diffuse(a1 * a2, math.hypot(a2 * s1, s2))
    torch.testing.assert_close(composed.means, direct.means)
    torch.testing.assert_close(composed.stds, direct.stds)
    # variance preserving with alpha_bar -> 0 forgets the data: N(0, I)
    pure_noise = gm.diffuse(math.sqrt(1e-8), math.sqrt(1 - 1e-8))
    torch.testing.assert_close(pure_noise.stds, torch.ones(2, dtype=F64), atol=1e-6, rtol=0)
    assert pure_noise.means.abs().max() < 1e-3


# --------------------------------------------------------------------------- construction


def test_construction_defaults_dtype_device_and_repr():
    gm = GaussianMixture([[0, 0], [1, 1]], 0.5)
    assert gm.n_components == 2 and gm.dim == 2
    assert gm.dtype == torch.float32 and gm.device == torch.device("cpu")
    torch.testing.assert_close(gm.weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(gm.stds, torch.tensor([0.5, 0.5]))
    assert GaussianMixture(torch.zeros(1, 3, dtype=F64), 1.0).dtype == F64
    assert GaussianMixture(torch.zeros(1, 3), 1.0, dtype=F64).dtype == F64
    assert gm.to(dtype=F64).sample(5, gen(0)).dtype == F64
    # evaluations follow the input's dtype, sampling follows the mixture
    assert gm.to(dtype=F64).log_prob(torch.zeros(4, 2)).dtype == torch.float32
    assert gm.log_prob(torch.zeros(4, 2, dtype=F64)).dtype == F64
    assert "GaussianMixture(K=2, d=2" in repr(gm)


def test_named_mixtures():
    eight = toy.eight_gaussians()
    assert eight.n_components == 8 and eight.dim == 2
    torch.testing.assert_close(eight.means.norm(dim=1), torch.full((8,), 1.4))
    torch.testing.assert_close(eight.stds, torch.full((8,), 0.1))
    two = toy.two_mode_mixture()
    torch.testing.assert_close(two.weights, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(two.means, torch.tensor([[5.0, 5.0], [-5.0, -5.0]]))
    torch.testing.assert_close(two.stds, torch.ones(2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(means=[[0.0], [1.0]], stds=1.0, weights=[0.5, 0.6]), ValueError, "weights"),
        (dict(means=[[0.0], [1.0]], stds=1.0, weights=[1.5, -0.5]), ValueError, "weights"),
        (dict(means=[[0.0], [1.0]], stds=1.0, weights=[1.0]), ValueError, "weights"),
        (dict(means=[[0.0], [1.0]], stds=[1.0, -1.0]), ValueError, "stds"),
        (dict(means=[[0.0], [1.0]], stds=0.0), ValueError, "stds"),
        (dict(means=[[0.0], [1.0]], stds=[1.0, 1.0, 1.0]), ValueError, "stds"),
        (dict(means=[0.0, 1.0], stds=1.0), ValueError, "means"),
        (dict(means=[[0.0], [math.nan]], stds=1.0), ValueError, "means"),
        (dict(means=[[0.0]], stds=[math.nan]), ValueError, "stds"),
        (dict(means=[[0.0]], stds=1.0, dtype=torch.int64), TypeError, "dtype"),
    ],
)
def test_construction_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        GaussianMixture(**kwargs)


def test_argument_errors():
    gm = random_mixture(2)
    with pytest.raises(ValueError, match="x must have shape"):
        gm.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        gm.score(torch.tensor(0.0))
    with pytest.raises(ValueError, match="sigma"):
        gm.perturb(-0.1)
    with pytest.raises(ValueError, match="alpha"):
        gm.diffuse(0.0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gm.diffuse(1.0, math.inf)
    with pytest.raises(TypeError, match="sigma"):
        gm.perturb("0.1")
    with pytest.raises(ValueError, match="n must be a positive int"):
        gm.sample(0)
    with pytest.raises(TypeError, match="n must be a positive int"):
        gm.sample(2.5)


# --------------------------------------------------------------------------- 2D data sets


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_shape_spread_and_seeds(name):
    n = 20_000
    x = toy.sample(name, n, gen(0))
    assert x.shape == (n, 2) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.isfinite(x).all()
    # documented scaling: centred, per-coordinate std within [0.7, 1.3], inside [-3, 3]^2
    assert x.mean(0).abs().max() < 0.1
    std = x.std(0)
    assert ((std > 0.7) & (std < 1.3)).all(), std
    assert x.abs().max() < 3.0
    assert torch.equal(x, DATASETS[name](n, gen(0)))
    assert not torch.allclose(x, toy.sample(name, n, gen(1)))


def test_eight_gaussians_dataset_is_the_mixture():
    assert torch.equal(
        toy.sample("8gaussians", 500, gen(3)), toy.eight_gaussians().sample(500, gen(3))
    )


def test_dataset_noise_parameter():
    # noise adds independent variance: std^2 grows by about noise^2
    clean = toy.rings(50_000, gen(0), noise=0.0)
    noisy = toy.rings(50_000, gen(0), noise=0.3)
    radii = torch.tensor([0.5, 1.0, 1.5, 2.0])
    distance = (clean.norm(dim=1, keepdim=True) - radii).abs()
    assert distance.min(1).values.max() < 1e-5
    assert torch.bincount(distance.argmin(1), minlength=4).min() > 0.24 * len(clean)
    torch.testing.assert_close(
        noisy.var(0) - clean.var(0), torch.full((2,), 0.09), atol=0.01, rtol=0
    )


def test_dataset_errors():
    with pytest.raises(ValueError, match="name must be one of .*swiss_roll"):
        toy.sample("swissroll", 10)
    with pytest.raises(ValueError, match="n must be a positive int"):
        toy.sample("moons", 0)
    with pytest.raises(TypeError, match="n must be a positive int"):
        toy.sample("moons", True)
    with pytest.raises(ValueError, match="noise"):
        toy.moons(10, noise=-1.0)


def test_noised_terms_give_each_point_the_law_of_its_own_noise_level():
    """Row i of the log joints is scipy's log w_k + log N(x_i; a_i m_k, (a_i^2 s_k^2 + s_i^2) I),
    and a constant (a, s) reproduces diffuse(a, s)."""
    mixture = GaussianMixture(
        [[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]], [0.3, 0.6, 0.2], [0.5, 0.3, 0.2]
    )
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha = torch.tensor([1.0, 0.8, 0.5, 0.1], dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.6, 0.9, 1.0], dtype=torch.float64)
    offsets, variances, log_joint = mixture.noised_terms(x, alpha, sigma)
    for i in range(4):
        for k in range(3):
            mean = alpha[i].item() * mixture.means[k].double().numpy()
            var = alpha[i].item() ** 2 * mixture.stds[k].item() ** 2 + sigma[i].item() ** 2
            expected = math.log(mixture.weights[k].item()) + multivariate_normal(
                mean, var * np.eye(2)
            ).logpdf(x[i].numpy())
            assert log_joint[i, k].item() == pytest.approx(expected, rel=1e-10)
            assert variances[i, k].item() == pytest.approx(var, rel=1e-10)
            np.testing.assert_allclose(offsets[i, k].numpy(), x[i].numpy() - mean, rtol=1e-12)
    same = mixture.noised_terms(x, torch.full((4,), 0.7), torch.full((4,), 0.4))[2]
    torch.testing.assert_close(same, mixture.diffuse(0.7, 0.4).log_prob_components(x))
