"""Tests of dlai_diffusion.metrics against closed forms, exact identities and real digits."""

from __future__ import annotations

import functools
import math
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from dlai_diffusion import metrics, toy
from dlai_diffusion.data import load_mnist


def gaussian(n: int, d: int, seed: int, mean=0.0, std=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, d, generator=g, dtype=torch.float64)


def standard_normal_sampler(d: int, shift: float = 0.0):
    def sampler(n, generator=None):
        return torch.randn(n, d, generator=generator) + shift

    return sampler


# --------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_zero_for_identical_samples_and_grows_with_shift():
    x = gaussian(500, 3, seed=0)
    assert metrics.sliced_wasserstein(x, x, seed=0) < 1e-12
    y = gaussian(500, 3, seed=1)
    values = [metrics.sliced_wasserstein(x, y + s, seed=0) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] > 0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize(("m1", "s1", "m2", "s2"), [(0.0, 1.0, 1.0, 2.0), (0.5, 0.5, -0.5, 1.5)])
def test_sliced_wasserstein_1d_gaussians_closed_form(m1, s1, m2, s2):
    # W2(N(m1, s1^2), N(m2, s2^2)) = sqrt((m1 - m2)^2 + (s1 - s2)^2); with independent samples
    # of 20k points the error has std 0.012 over seeds (largest of 10: 0.022).
    x, y = gaussian(20_000, 1, 2, m1, s1), gaussian(20_000, 1, 3, m2, s2)
    exact = math.hypot(m1 - m2, s1 - s2)
    assert metrics.sliced_wasserstein(x, y) == pytest.approx(exact, abs=0.05)
    # Order p = 1 in 1D: W1 = int |F - G|, checked on the empirical CDFs directly.
    assert metrics.sliced_wasserstein(x[:500], y[:500], p=1) == pytest.approx(
        empirical_cdf_integral(x[:500, 0], y[:500, 0], power=1), rel=1e-9
    )


@pytest.mark.parametrize("d", [2, 5])
def test_sliced_wasserstein_of_a_pure_shift(d):
    # Shifting a sample by delta moves every projection by u.delta without reordering it, so
    # SW2^2 = E_u (u.delta)^2 = |delta|^2 / d. Monte-Carlo over 4000 directions: relative
    # std of SW 0.7 % (d = 5, over seeds), tolerance 3 %.
    x = gaussian(300, d, seed=4)
    delta = torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    value = metrics.sliced_wasserstein(x, x + delta, n_projections=4000, seed=1)
    assert value == pytest.approx(delta.norm().item() / math.sqrt(d), rel=0.03)


def test_sliced_wasserstein_independent_gaussians_shifted():
    x, y = gaussian(5000, 2, 5), gaussian(5000, 2, 6, mean=torch.tensor([1.0, -1.0]))
    value = metrics.sliced_wasserstein(x, y, n_projections=1000, seed=0)
    assert value == pytest.approx(1.0, abs=0.06)  # |delta| / sqrt(2); error std about 0.015


def test_sliced_wasserstein_unequal_sizes_exact():
    # Quantile functions of {0, 1} and {0, 0.5, 1} differ by 0.5 on (1/3, 2/3): W2^2 = 1/12.
    x, y = torch.tensor([0.0, 1.0]).double(), torch.tensor([0.0, 0.5, 1.0]).double()
    assert metrics.sliced_wasserstein(x, y) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    # The same empirical distribution written with repeated points is at distance 0.
    z = gaussian(101, 3, seed=7)
    assert metrics.sliced_wasserstein(z, torch.cat([z, z, z]), seed=0) < 1e-7
    # Unequal sizes agree with the equal-size formula when the points are duplicated.
    w = gaussian(101, 3, seed=8)
    assert metrics.sliced_wasserstein(z, torch.cat([w, w]), seed=3) == pytest.approx(
        metrics.sliced_wasserstein(z, w, seed=3), rel=1e-9
    )


def test_sliced_wasserstein_seed_and_generator_are_reproducible():
    x, y = gaussian(200, 4, seed=0), gaussian(200, 4, seed=1, mean=0.3)
    a = metrics.sliced_wasserstein(x, y, n_projections=16, seed=5)
    b = metrics.sliced_wasserstein(
        x, y, n_projections=16, generator=torch.Generator().manual_seed(5)
    )
    c = metrics.sliced_wasserstein(x, y, n_projections=16, seed=6)
    assert a == b != c
    with pytest.raises(ValueError, match="seed or generator"):
        metrics.sliced_wasserstein(x, y, seed=1, generator=torch.Generator())


def test_sliced_wasserstein_follows_float32_input():
    x, y = gaussian(1000, 2, seed=0).float(), gaussian(1000, 2, seed=1).float()
    value = metrics.sliced_wasserstein(x, y, seed=0)
    assert value == pytest.approx(
        metrics.sliced_wasserstein(x.double(), y.double(), seed=0), rel=1e-4
    )


# --------------------------------------------------------------------------- energy distance


def empirical_cdf_integral(x: torch.Tensor, y: torch.Tensor, power: int) -> float:
    """int |F_x(t) - F_y(t)|^power dt for the empirical CDFs of 1D samples, exactly."""
    points = torch.cat([x, y]).sort().values
    f = torch.searchsorted(x.sort().values, points[:-1], right=True).double() / x.numel()
    g = torch.searchsorted(y.sort().values, points[:-1], right=True).double() / y.numel()
    return ((f - g).abs().pow(power) * torch.diff(points)).sum().item()


def folded_normal_mean(mu: float, sigma: float) -> float:
    """E|Z| for Z ~ N(mu, sigma^2)."""
    tail = math.erf(mu / (sigma * math.sqrt(2)))
    return sigma * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sigma**2)) + mu * tail


def test_energy_distance_zero_for_identical_samples_and_grows_with_shift():
    x = gaussian(400, 2, seed=0)
    assert metrics.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    y = gaussian(400, 2, seed=1)
    values = [metrics.energy_distance(x, y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] > 0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))


def test_energy_distance_1d_is_twice_cramer_distance():
    # Exact identity for the V-statistic: D^2 = 2 int (F_n - G_m)^2 (Székely & Rizzo, 2013).
    x, y = gaussian(300, 1, seed=2)[:, 0], gaussian(200, 1, seed=3, mean=0.4, std=1.3)[:, 0]
    assert metrics.energy_distance(x, y) == pytest.approx(
        2 * empirical_cdf_integral(x, y, power=2), rel=1e-9
    )


def test_energy_distance_1d_gaussians_closed_form():
    # X ~ N(0, 1), Y ~ N(1, 4): E|X-Y| is a folded normal mean, E|X-X'| = 2 s / sqrt(pi).
    exact = 2 * folded_normal_mean(-1.0, math.sqrt(5)) - 2 / math.sqrt(math.pi) * (1 + 2)
    x, y = gaussian(4000, 1, seed=4), gaussian(4000, 1, seed=5, mean=1.0, std=2.0)
    value = metrics.energy_distance(x, y, unbiased=True)
    assert value == pytest.approx(exact, abs=0.1)  # exact 0.534; std over seeds 0.028


def test_energy_distance_u_statistic_is_centred_under_the_null():
    pairs = [(gaussian(200, 2, 2 * s), gaussian(200, 2, 2 * s + 1)) for s in range(20)]
    u = np.array([metrics.energy_distance(x, y, unbiased=True) for x, y in pairs])
    v = np.array([metrics.energy_distance(x, y) for x, y in pairs])
    assert abs(u.mean()) < 3 * u.std() / math.sqrt(len(u))
    assert (v > u).all() and v.mean() > 5 * u.std() / math.sqrt(len(u))


# --------------------------------------------------------------------------- MMD


def gaussian_kernel_mean(m1, s1, m2, s2, h):
    """E exp(-(X - Y)^2 / (2 h^2)) for independent X ~ N(m1, s1^2), Y ~ N(m2, s2^2)."""
    total = h**2 + s1**2 + s2**2
    return h / math.sqrt(total) * math.exp(-((m1 - m2) ** 2) / (2 * total))


def test_mmd_1d_gaussians_closed_form():
    h = 1.0
    exact = (
        gaussian_kernel_mean(0, 1, 0, 1, h)
        + gaussian_kernel_mean(1, 0.5, 1, 0.5, h)
        - 2 * gaussian_kernel_mean(0, 1, 1, 0.5, h)
    )
    x, y = gaussian(3000, 1, seed=1), gaussian(3000, 1, seed=2, mean=1.0, std=0.5)
    assert metrics.mmd(x, y, bandwidth=h) == pytest.approx(exact, abs=0.035)  # 0.325; std 0.01


def test_mmd_unbiased_is_centred_under_the_null_and_positive_otherwise():
    pairs = [(gaussian(200, 2, 2 * s), gaussian(200, 2, 2 * s + 1)) for s in range(20)]
    values = np.array([metrics.mmd(x, y) for x, y in pairs])
    assert abs(values.mean()) < 3 * values.std() / math.sqrt(len(values))
    assert (values < 0).any()  # an unbiased estimator of 0 must go below it sometimes
    shifted = metrics.mmd(pairs[0][0], pairs[0][1] + 1.0)
    assert shifted > values.mean() + 10 * values.std()
    biased = metrics.mmd(pairs[0][0], pairs[0][1], unbiased=False)
    assert biased > values[0] and biased > 0


def test_mmd_median_heuristic_and_degenerate_input():
    x, y = gaussian(100, 2, seed=0), gaussian(100, 2, seed=1, mean=2.0)
    h = torch.pdist(torch.cat([x, y])).median().item()
    assert metrics.mmd(x, y) == pytest.approx(metrics.mmd(x, y, bandwidth=h), rel=1e-9)
    same = torch.ones(5, 2)
    assert metrics.mmd(same, same) == 0.0
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.mmd(x, y, bandwidth=-1.0)


def test_pairwise_metrics_are_unchanged_by_blocking(monkeypatch):
    x, y = gaussian(300, 3, seed=0), gaussian(250, 3, seed=1, mean=0.2)
    whole = (
        metrics.energy_distance(x, y),
        metrics.mmd(x, y),
        metrics.sliced_wasserstein(x, y, seed=0),
    )
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 20_000)  # several blocks each
    blocked = (
        metrics.energy_distance(x, y),
        metrics.mmd(x, y),
        metrics.sliced_wasserstein(x, y, seed=0),
    )
    assert blocked == pytest.approx(whole, rel=1e-10)


def test_metrics_reject_bad_input():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="same dimension"):
        metrics.energy_distance(x, torch.zeros(10, 3))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        metrics.mmd(np.zeros((10, 2)), x)
    with pytest.raises(ValueError, match="shape"):
        metrics.sliced_wasserstein(torch.zeros(2, 3, 4), x)
    with pytest.raises(ValueError, match="n_projections"):
        metrics.sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="p must be"):
        metrics.sliced_wasserstein(x, x, p=0.5)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.energy_distance(torch.zeros(1, 2), x, unbiased=True)


# --------------------------------------------------------------------------- floor


def test_two_sample_floor_is_reproducible_and_shrinks_with_n():
    sampler = standard_normal_sampler(2)
    small = metrics.two_sample_floor(
        sampler, "energy_distance", 100, n_repeats=6, generator=torch.Generator().manual_seed(0)
    )
    again = metrics.two_sample_floor(
        sampler, "energy_distance", 100, n_repeats=6, generator=torch.Generator().manual_seed(0)
    )
    large = metrics.two_sample_floor(
        sampler, "energy_distance", 1600, n_repeats=6, generator=torch.Generator().manual_seed(0)
    )
    assert small == again and len(small.values) == 6 and small.n == 100
    assert small.mean == pytest.approx(np.mean(small.values))
    assert small.std == pytest.approx(np.std(small.values, ddof=1))
    # The V-statistic floor is of order 1/n: 16 times more points, about 16 times lower.
    assert 6 < small.mean / large.mean < 40


def test_compare_to_floor_reads_as_times_the_floor():
    sampler = functools.partial(toy.sample, "moons")
    g = torch.Generator().manual_seed(0)
    good = metrics.compare_to_floor(sampler(1000, g), sampler, generator=g)
    bad = metrics.compare_to_floor(sampler(1000, g) * 1.5, sampler, generator=g)
    assert 0.5 < good.ratio < 2 < 5 < bad.ratio  # seeds 0-3 give 0.8-1.2 and 6.5-10
    assert bad.metric == "sliced_wasserstein" and bad.n == 1000
    assert bad.ratio == pytest.approx(bad.value / bad.floor)
    assert "x the floor" in str(bad)
    ratio = metrics.ratio_to_floor(sampler(1000, g) * 1.5, sampler, generator=g)
    assert ratio > 5


def test_compare_to_floor_with_mmd_uses_z_score_and_a_callable_metric():
    mixture = toy.eight_gaussians()
    g = torch.Generator().manual_seed(1)
    far = metrics.compare_to_floor(mixture.sample(400, g) * 0.7, mixture.sample, "mmd", generator=g)
    assert far.z > 10
    custom = metrics.compare_to_floor(
        mixture.sample(400, g),
        mixture.sample,
        lambda a, b: (a.mean(0) - b.mean(0)).norm(),
        generator=g,
    )
    assert custom.metric == "<lambda>" and custom.value >= 0
    with pytest.raises(ValueError, match="metric must be one of"):
        metrics.compare_to_floor(mixture.sample(10), mixture.sample, "wasserstein")


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_diagonal_closed_form_and_symmetry():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.5, 2.0, 3.0])
    exact = (mu1 - mu2).square().sum() + (s1 - s2).square().sum()  # commuting covariances
    d12 = metrics.frechet_distance(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2))
    d21 = metrics.frechet_distance(mu2, torch.diag(s2**2), mu1, torch.diag(s1**2))
    assert d12 == pytest.approx(exact.item(), rel=1e-10)
    assert d21 == pytest.approx(d12, rel=1e-10)


def test_frechet_distance_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(4), b @ b.T
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(
        cov1 + cov2 - 2 * scipy.linalg.sqrtm(cov1 @ cov2).real
    )
    value = metrics.frechet_distance(*map(torch.tensor, (mu1, cov1, mu2, cov2)))
    assert value == pytest.approx(reference, rel=1e-8)
    assert metrics.frechet_distance(*map(torch.tensor, (mu1, cov1, mu1, cov1))) < 1e-9
    # A singular covariance (rank 1) is fine.
    v = torch.tensor([[1.0], [2.0], [0.0], [0.0]])
    assert metrics.frechet_distance(torch.zeros(4), v @ v.T, torch.zeros(4), v @ v.T) < 1e-9


def test_fid_from_features_of_gaussian_samples():
    # Fitting Gaussians to 20k samples recovers the closed form up to a small estimation error.
    x = gaussian(20_000, 3, seed=0, std=torch.tensor([1.0, 0.5, 2.0]))
    y = gaussian(20_000, 3, seed=1, mean=torch.tensor([1.0, 0.0, 0.0]), std=1.0)
    exact = 1.0 + 0.5**2 + 0.0 + 1.0**2
    assert metrics.fid_from_features(x, y) == pytest.approx(exact, abs=0.05)
    with pytest.raises(ValueError, match="same width"):
        metrics.fid_from_features(x, y[:, :2])


# --------------------------------------------------------------------------- LeNet on MNIST


@pytest.fixture(scope="module")
def digits():
    return load_mnist("train", subset=True), load_mnist("test", subset=True)


def blur(images: torch.Tensor, width: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, 28, 28) images in [-1, 1], background kept at -1."""
    r = torch.arange(-3.0, 4.0)
    k = torch.exp(-(r**2) / (2 * width**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(images + 1, (3, 3, 0, 0)), k.view(1, 1, 1, 7))
    return F.conv2d(F.pad(x, (0, 0, 3, 3)), k.view(1, 1, 7, 1)) - 1


def test_lenet_weights_ship_small_and_load_safely():
    assert metrics.LENET_WEIGHTS.stat().st_size < 1_000_000
    checkpoint = torch.load(metrics.LENET_WEIGHTS, weights_only=True)
    assert checkpoint["test_accuracy"] >= 0.99  # on the full 10k test set, at training time
    model = metrics.load_lenet()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert 40_000 < sum(p.numel() for p in model.parameters()) < 100_000


def test_lenet_accuracy_on_shipped_test_digits(digits):
    _, test = digits
    predicted = metrics.predict_digits(test.images)
    assert (predicted == test.labels).float().mean().item() >= 0.98
    assert metrics.lenet_features(test.images[:7, 0]).shape == (7, 84)  # (N, 28, 28) works too
    assert metrics.classifier_confidence(test.images) > 0.98


def test_classifier_fid_orders_real_blurred_and_noise(digits):
    train, test = digits
    real = train.images[:1000]
    noise = torch.randn(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    reference = metrics.lenet_features(test.images)
    fid = {
        name: metrics.fid_from_features(reference, metrics.lenet_features(images))
        for name, images in (("real", real), ("blurred", blur(real, 1.0)), ("noise", noise))
    }
    # Measured: about 3, 120 and 600.
    assert fid["real"] < 10 < 5 * fid["real"] < fid["blurred"] < fid["noise"]
    assert metrics.classifier_fid(real, test.images) == pytest.approx(fid["real"], rel=1e-6)
    assert metrics.classifier_confidence(noise) < 0.95


def test_lenet_rejects_wrong_image_shapes():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        metrics.lenet_features(torch.zeros(2, 3, 28, 28))
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        metrics.classifier_confidence(np.zeros((2, 1, 28, 28)))


def test_inception_fid_without_torch_fidelity_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        metrics.inception_fid(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_follow_cuda_inputs(digits):
    x, y = gaussian(500, 2, seed=0).cuda(), gaussian(500, 2, seed=1, mean=0.5).cuda()
    for fn in (metrics.energy_distance, metrics.mmd):
        assert fn(x, y) == pytest.approx(fn(x.cpu(), y.cpu()), rel=1e-6)
    assert metrics.sliced_wasserstein(x, y, seed=0) == pytest.approx(
        metrics.sliced_wasserstein(x.cpu(), y.cpu(), seed=0), rel=1e-6
    )
    images = digits[1].images[:200]
    assert metrics.classifier_fid(images.cuda(), images[:100].cuda()) == pytest.approx(
        metrics.classifier_fid(images, images[:100]), rel=1e-3
    )


# --------------------------------------------------------------------------- the digit judge


def test_digit_judge_accepts_real_digits_and_rejects_what_is_not_one(digits):
    _, test = digits
    g = torch.Generator().manual_seed(1)
    real = metrics.judge_digits(test.images)
    assert real.recognisable.float().mean() >= 0.97
    assert (real.label[real.recognisable] == test.labels[real.recognisable]).float().mean() > 0.99
    x = test.images[:500]
    not_digits = {
        "noise": (0.8 * torch.randn(500, 1, 28, 28, generator=g) - 0.5).clamp(-1, 1),
        "shuffled pixels": x.flatten(1)[:, torch.randperm(784, generator=g)].view_as(x),
        "heavy blur": blur(blur(x, 2.0), 2.0),
        "two digits averaged": (x + x.roll(1, 0)) / 2,
    }
    caught = {k: 1 - metrics.judge_digits(v).recognisable.float().mean().item()
              for k, v in not_digits.items()}
    assert min(caught["noise"], caught["shuffled pixels"], caught["heavy blur"]) >= 0.95, caught
    assert caught["two digits averaged"] >= 0.7, caught
    # the 10-class LeNet is sure of itself on the same noise: why the judge exists
    assert metrics.classifier_confidence(not_digits["noise"]) > 0.5
    light = metrics.judge_digits(blur(x, 0.7))  # a slightly soft digit is still a digit
    assert light.recognisable.float().mean() >= 0.9


def test_digit_judge_weights_are_safetensors():
    with open(metrics.JUDGE_WEIGHTS, "rb") as f:
        header = f.read(8 + int.from_bytes(f.read(8), "little"))
    assert b'"head.weight"' in header and metrics.JUDGE_WEIGHTS.stat().st_size < 400_000
