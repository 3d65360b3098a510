"""DDPM: forward process, posterior, parameterisations, losses, the variational bound, sampling.

References are independent of the code under test: Gaussian conditioning of the joint law of
(x_{t-1}, x_t) written out by hand, Monte-Carlo moments with stated tolerances,
torch.distributions, the exact scores of ``toy.GaussianMixture``, and, for Gaussian data
N(m, S), the exact noise predictor E[eps | x_t] = s (a^2 S + s^2 I)^{-1} (x_t - a m) (with
x_t = a x_0 + s eps), under which the model is nearly the data law: the sampler must return
its mean and covariance and the bound must sit just above the true negative log-likelihood.
"""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion import ddpm, runs, toy
from dlai_diffusion.metrics import energy_distance
from dlai_diffusion.schedules import Schedule
from dlai_diffusion.train import train

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class GaussianData:
    """Data N(m, S) in d dimensions and its exact noise predictor under a schedule."""

    def __init__(self, mean, cov, dtype=F64):
        self.m = torch.as_tensor(mean, dtype=dtype)
        self.S = torch.as_tensor(cov, dtype=dtype)
        self.eigenvalues, self.U = torch.linalg.eigh(self.S)

    def sample(self, n: int, generator) -> torch.Tensor:
        z = torch.randn(n, len(self.m), generator=generator, dtype=self.m.dtype)
        return self.m + z @ torch.linalg.cholesky(self.S).T

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.distributions.MultivariateNormal(self.m, self.S).log_prob(x)

    def exact_eps(self, schedule: Schedule):
        """E[eps | x_t] by Gaussian conditioning: Cov(eps, x_t) = s I, Cov(x_t) = a^2 S + s^2 I."""

        def eps(x, t):
            a = schedule.gather("sqrt_alpha_bars", t, x)
            s = schedule.gather("sqrt_one_minus_alpha_bars", t, x)
            rotated = (x - a * self.m) @ self.U  # diagonalise a^2 S + s^2 I
            return s * (rotated / (a**2 * self.eigenvalues + s**2)) @ self.U.T

        return eps


CORRELATED = GaussianData([0.5, -0.3], [[0.30, 0.12], [0.12, 0.15]])


def zero_model(x, t):
    return torch.zeros_like(x)


# --------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("t", [0, 40, 999])
def test_q_sample_has_the_moments_of_the_diffusion_kernel(t):
    """Mean sqrt(alpha_bar_t) x_0 and variance 1 - alpha_bar_t (notes Eq. 37), 5 standard errors."""
    s = Schedule.linear(1000)
    n = 40_000
    x0 = torch.tensor([[1.5, -0.7]], dtype=F64).expand(n, 2)
    xt = ddpm.q_sample(s, x0, t, generator=gen(t))
    mean, var = s.sqrt_alpha_bars[t].item() * x0[0], s.one_minus_alpha_bars[t].item()
    assert torch.allclose(xt.mean(0), mean, atol=5 * math.sqrt(var / n))
    assert torch.allclose(
        xt.var(0), torch.full((2,), var, dtype=F64), atol=5 * var * (2 / n) ** 0.5
    )


def test_forward_steps_compose_to_the_diffusion_kernel():
    """Running notes Eq. 28 step by step gives the marginal of q_sample (Ho et al., Eq. 4)."""
    s = Schedule.sohl_dickstein(8)
    n, g = 40_000, gen(1)
    x = torch.full((n, 1), 2.0, dtype=F64)
    for t in range(s.T):
        x = ddpm.q_step(s, x, t, generator=g)
        q = ddpm.q_mean_variance(s, torch.full((1, 1), 2.0, dtype=F64), t)
        assert abs(x.mean().item() - q.mean.item()) < 5 * math.sqrt(q.variance.item() / n)
        assert abs(x.var().item() - q.variance.item()) < 5 * q.variance.item() * math.sqrt(2 / n)


@pytest.mark.parametrize("schedule", [Schedule.linear(1000), Schedule.cosine(50)])
def test_posterior_is_gaussian_conditioning_of_the_joint(schedule):
    """q(x_{t-1} | x_t, x_0) by hand: given x_0, x_{t-1} = a' x_0 + noise of variance v and
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) noise, so Var(x_t) = alpha_t v + beta_t and
    Cov(x_{t-1}, x_t) = sqrt(alpha_t) v; condition the joint Gaussian on x_t."""
    s = schedule
    g = gen(2)
    t = torch.arange(1, s.T)
    x0 = torch.randn(s.T - 1, 3, generator=g, dtype=F64)
    xt = torch.randn(s.T - 1, 3, generator=g, dtype=F64)
    post = ddpm.q_posterior(s, x0, xt, t)
    beta = s.betas[t, None]
    alpha = 1 - beta
    ab_prev = torch.cumprod(1 - s.betas, 0)[t - 1, None]
    v = 1 - ab_prev
    mean_prev, mean_t = ab_prev.sqrt() * x0, (alpha * ab_prev).sqrt() * x0
    var_t, cov = alpha * v + beta, alpha.sqrt() * v
    expected_mean = mean_prev + cov / var_t * (xt - mean_t)
    expected_var = v - cov**2 / var_t
    assert torch.allclose(post.mean, expected_mean, rtol=1e-9, atol=1e-12)
    assert torch.allclose(post.variance.expand_as(x0), expected_var.expand_as(x0), rtol=1e-8)
    assert torch.allclose(post.log_variance.exp(), post.variance, rtol=1e-12)
    # at t = 0 the target is the data itself
    first = ddpm.q_posterior(s, x0[:2], xt[:2], 0)
    assert torch.allclose(first.mean, x0[:2]) and float(first.variance.max()) == 0.0


# --------------------------------------------------------------------------- parameterisations


def test_x0_eps_round_trip():
    s = Schedule.cosine(200)
    g = gen(3)
    x0 = torch.randn(200, 2, generator=g, dtype=F64)
    eps = torch.randn(200, 2, generator=g, dtype=F64)
    t = torch.arange(200)
    xt = ddpm.q_sample(s, x0, t, noise=eps)
    assert torch.allclose(ddpm.predict_x0_from_eps(s, xt, t, eps), x0, atol=1e-9)
    assert torch.allclose(ddpm.predict_eps_from_x0(s, xt, t, x0), eps, atol=1e-9)
    assert torch.allclose(ddpm.score_to_eps(s, ddpm.eps_to_score(s, eps, t), t), eps, atol=1e-12)


def test_exact_noise_predictor_is_the_rescaled_score_of_the_noised_data():
    """E[eps | x_t] from Gaussian conditioning, through eps_to_score, equals the exact score
    of the noised law computed by ``toy.GaussianMixture.diffuse`` (Tweedie's formula)."""
    s = Schedule.linear(1000)
    data = GaussianData([0.4, -1.0], 0.3 * torch.eye(2, dtype=F64))
    mixture = toy.GaussianMixture([[0.4, -1.0]], math.sqrt(0.3), dtype=F64)
    x = torch.randn(50, 2, generator=gen(4), dtype=F64)
    for t in (0, 10, 300, 999):
        score = ddpm.eps_to_score(s, data.exact_eps(s)(x, t), t)
        noised = mixture.diffuse(s.sqrt_alpha_bars[t].item(), s.sqrt_one_minus_alpha_bars[t].item())
        assert torch.allclose(score, noised.score(x), rtol=1e-9)


# --------------------------------------------------------------------------- losses


def test_simple_loss_matches_a_hand_computation_and_its_minimum():
    s = Schedule.cosine(100)
    g = gen(5)
    x0 = CORRELATED.sample(6, g)
    t, eps = torch.tensor([0, 5, 20, 50, 80, 99]), torch.randn(6, 2, generator=g, dtype=F64)
    model = CORRELATED.exact_eps(s)
    by_hand = (model(ddpm.q_sample(s, x0, t, eps), t) - eps).pow(2).mean(1)
    loss = ddpm.simple_loss(model, s, x0, t=t, noise=eps, reduction="none")
    assert torch.allclose(loss, by_hand)
    # The exact predictor reaches the minimum E[tr Cov(eps | x_t)] / d, with
    # Cov(eps | x_t) = I - s^2 (a^2 S + s^2 I)^{-1}, averaged over t uniform.
    a2, s2 = s.alpha_bars[:, None], s.one_minus_alpha_bars[:, None]
    minimum = (1 - s2 / (a2 * CORRELATED.eigenvalues + s2)).mean()
    n = 100_000
    estimate = ddpm.simple_loss(model, s, CORRELATED.sample(n, g), generator=g, reduction="none")
    assert abs(estimate.mean() - minimum) < 5 * estimate.std() / math.sqrt(n)
    worse = ddpm.simple_loss(lambda x, t: 0.5 * model(x, t), s, CORRELATED.sample(n, g), g)
    assert worse > estimate.mean() + 5 * estimate.std() / math.sqrt(n)


def test_simple_loss_trains_a_network():
    torch.manual_seed(0)
    s = Schedule.linear(100)
    net = ddpm.ddpm_mlp(s, hidden=32)
    loss = ddpm.simple_loss(net, s, torch.randn(8, 2), gen(6))
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in net.parameters())


def test_normal_kl_matches_torch_distributions_and_monte_carlo():
    g = gen(7)
    m1, m2 = torch.randn(2, 50, generator=g, dtype=F64)
    lv1, lv2 = torch.randn(2, 50, generator=g, dtype=F64)
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    kl = ddpm.normal_kl(m1, lv1, m2, lv2)
    assert torch.allclose(kl, torch.distributions.kl_divergence(p, q), rtol=1e-10)
    assert bool((kl >= 0).all())
    x = p.sample((100_000,))
    log_ratio = p.log_prob(x) - q.log_prob(x)
    assert bool(((log_ratio.mean(0) - kl).abs() < 5 * log_ratio.std(0) / math.sqrt(1e5)).all())
    assert torch.allclose(ddpm.gaussian_log_likelihood(x[:3], m1, lv1), p.log_prob(x[:3]))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_discretized_likelihood_is_a_distribution_over_the_256_bins(dtype):
    grid = (torch.arange(256, dtype=dtype) / 127.5 - 1)[:, None]  # 256 bins x 7 Gaussians
    means = torch.tensor([0.0, 0.3, -0.99, 1.0, 2.5, -3.0, 0.5], dtype=dtype)
    log_vars = torch.tensor([0.0, -5.0, -12.0, -2.0, 1.0, -3.0, -16.0], dtype=dtype)
    log_p = ddpm.discretized_gaussian_log_likelihood(grid, means, log_vars)
    assert bool(torch.isfinite(log_p).all()) and bool((log_p <= 1e-6).all())
    tol = 1e-10 if dtype == F64 else 1e-5
    assert torch.allclose(log_p.exp().sum(0), torch.ones(7, dtype=dtype), atol=tol)
    # an interior bin is the normal mass between its edges
    normal = torch.distributions.Normal(torch.tensor(0.3, dtype=F64), math.exp(-2.5))
    x = torch.tensor(0.2, dtype=F64)
    mass = normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255)
    got = ddpm.discretized_gaussian_log_likelihood(x, x * 0 + 0.3, x * 0 - 5.0)
    assert got.item() == pytest.approx(mass.log().item(), rel=1e-10)


def test_discretized_likelihood_has_finite_gradients_in_the_tails():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.0], dtype=F64)
    mean = torch.tensor([0.5, 0.9, -0.8, 0.99], dtype=F64, requires_grad=True)
    log_var = torch.tensor([-10.0, -12.0, -9.0, -4.0], dtype=F64, requires_grad=True)
    ddpm.discretized_gaussian_log_likelihood(x, mean, log_var).sum().backward()
    assert bool(torch.isfinite(mean.grad).all() and torch.isfinite(log_var.grad).all())
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ddpm.discretized_gaussian_log_likelihood(x * 2, mean, log_var)


# --------------------------------------------------------------------------- reverse process


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_reverse_mean_is_notes_eq_36_and_the_posterior_mean_at_the_predicted_x0(variance):
    s = Schedule.linear(1000)
    g = gen(8)
    t = torch.randint(0, 1000, (64,), generator=g)
    xt = torch.randn(64, 2, generator=g, dtype=F64)
    model = CORRELATED.exact_eps(s)
    kernel = ddpm.p_mean_variance(model, s, xt, t, variance)
    beta, ab = s.betas[t, None], s.alpha_bars[t, None]
    eq36 = (xt - beta / (1 - ab).sqrt() * model(xt, t)) / (1 - beta).sqrt()
    assert torch.allclose(kernel.mean, eq36, rtol=1e-9, atol=1e-12)
    assert torch.allclose(kernel.mean, ddpm.q_posterior(s, kernel.x0, xt, t).mean, atol=1e-9)
    table = s.betas if variance == "beta" else s.posterior_log_variance_clipped.exp()
    assert torch.allclose(kernel.variance.flatten(), table[t])
    clipped = ddpm.p_mean_variance(model, s, 5 * xt, t, variance, clip_x0=True)
    assert float(clipped.x0.abs().max()) <= 1.0


def test_the_last_step_adds_no_noise_and_the_others_add_sigma():
    s = Schedule.cosine(50)
    xt = torch.randn(20_000, 2, generator=gen(9))
    last = [ddpm.p_sample(zero_model, s, xt, 0, generator=gen(k)) for k in (1, 2)]
    assert torch.equal(last[0], last[1])
    mixed = ddpm.p_sample(zero_model, s, xt, torch.tensor([0, 7] * 10_000), generator=gen(3))
    assert torch.equal(mixed[0::2], last[0][0::2])
    step = ddpm.p_sample(zero_model, s, xt, 30, variance="posterior", generator=gen(4))
    mean = xt / (1 - s.betas[30]).sqrt().item()
    sigma2 = s.posterior_variance[30].item()
    assert abs((step - mean).var().item() - sigma2) < 5 * sigma2 * math.sqrt(2 / 40_000)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_sampler_with_the_exact_noise_predictor_recovers_the_gaussian(variance):
    """T = 1000 linear steps from N(0, I) with E[eps | x_t] for N(m, S) (S correlated): sample
    mean within 0.02 (5 standard errors for n = 20000) and covariance entries within 0.015 (the
    MC standard error is about 0.003; the finite T bias about 0.005)."""
    s = Schedule.linear(1000)
    data = GaussianData(CORRELATED.m, CORRELATED.S, dtype=torch.float32)
    g = gen(10)
    x = ddpm.sample_ddpm(
        data.exact_eps(s), torch.randn(20_000, 2, generator=g), s, variance, False, g
    )
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(0), data.m, atol=0.02)
    assert torch.allclose(torch.cov(x.T), data.S, atol=0.015)


def test_bound_with_the_exact_noise_predictor_is_just_above_the_true_nll():
    """Continuous data N(m, S), Gaussian decoder, n = 20000 samples, exact noise predictor.
    E[bound] >= E[-log p_theta] >= E[-log q] = the entropy (cross-entropy >= entropy), so the
    mean gap to the true NLL must be positive: with T = 20 cosine steps it is about 0.11 nats,
    12 standard errors, and we require > 3 standard errors and < 0.25 nats (close). The
    smaller posterior variance fits worse here (gap about 1.5 nats) but must bound too. Finer
    steps tighten the bound: with T = 100 the gap falls to about 0.015 nats."""
    g = gen(11)
    x0 = CORRELATED.sample(20_000, g)
    nll = CORRELATED.nll(x0)
    coarse = Schedule.cosine(20)
    for variance, upper in (("beta", 0.25), ("posterior", 3.0)):
        bound = ddpm.variational_bound(
            CORRELATED.exact_eps(coarse), coarse, x0, variance, "gaussian", g
        )
        gap = bound.total - nll
        standard_error = gap.std().item() / math.sqrt(len(gap))
        assert 3 * standard_error < gap.mean().item() < upper, (variance, gap.mean().item())
        if variance == "beta":
            coarse_total = bound.total
    fine = Schedule.cosine(100)
    fine_total = ddpm.variational_bound(
        CORRELATED.exact_eps(fine), fine, x0, "beta", "gaussian", g
    ).total
    gain = coarse_total - fine_total
    assert gain.mean() > 3 * gain.std() / math.sqrt(len(gain))
    assert abs((fine_total - nll).mean()) < 0.05


def test_discrete_bound_with_the_exact_noise_predictor_is_just_above_the_true_discrete_nll():
    """8-bit data: N(m, diag(s^2)) quantised to 256 levels in [-1, 1], discretised decoder,
    T = 100 linear steps. The exact discrete NLL is a sum of log bin masses; the bound in bits
    per dimension must exceed it (by 3 standard errors) and stay within 0.15 bits of it."""
    m, sd = torch.tensor([0.1, -0.2], dtype=F64), torch.tensor([0.3, 0.2], dtype=F64)
    data = GaussianData(m, torch.diag(sd**2))
    g = gen(12)
    x0 = torch.round((data.sample(20_000, g).clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
    normal = torch.distributions.Normal(m, sd)
    upper = torch.where(x0 > 1 - 1 / 255, torch.inf, x0 + 1 / 255)
    lower = torch.where(x0 < -1 + 1 / 255, -torch.inf, x0 - 1 / 255)
    true_bpd = -(normal.cdf(upper) - normal.cdf(lower)).log().sum(1) / (2 * math.log(2))
    s = Schedule.linear(100)
    bound = ddpm.variational_bound(data.exact_eps(s), s, x0, "beta", "discretized", g)
    gap = bound.bits_per_dim - true_bpd
    assert 3 * gap.std().item() / math.sqrt(len(gap)) < gap.mean().item() < 0.15
    assert 6 < bound.bits_per_dim.mean() < 8


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_every_term_of_the_bound_is_non_negative_and_they_add_up(variance):
    torch.manual_seed(0)
    s = Schedule.linear(60)
    net = ddpm.ddpm_mlp(s, hidden=32)
    x0 = torch.rand(64, 2, generator=gen(13)) * 2 - 1
    bound = ddpm.variational_bound(net, s, x0, variance, "gaussian", gen(14))
    assert bound.terms.shape == (64, 60) and bound.kl.shape == (64, 59)
    assert bool((bound.kl >= 0).all()) and bool((bound.prior >= 0).all())
    assert torch.allclose(bound.total, bound.prior + bound.terms.sum(1))
    assert torch.allclose(bound.bits_per_dim, bound.total / (2 * math.log(2)))
    assert torch.allclose(bound.decoder, bound.terms[:, 0])


def test_vb_terms_select_the_decoder_at_step_0_and_the_kl_elsewhere():
    s = Schedule.cosine(30)
    model = CORRELATED.exact_eps(s)
    g = gen(15)
    x0 = CORRELATED.sample(4, g)
    noise = torch.randn(4, 2, generator=g, dtype=F64)
    t = torch.tensor([0, 3, 0, 29])
    mixed = ddpm.vb_terms(model, s, x0, t, decoder="gaussian", noise=noise)
    nll = ddpm.decoder_nll(model, s, x0, decoder="gaussian", noise=noise)
    kl = ddpm.kl_terms(model, s, x0, t.clamp(min=1), noise=noise)
    assert torch.allclose(mixed, torch.where(t == 0, nll, kl))
    with pytest.raises(ValueError, match="t must be >= 1"):
        ddpm.kl_terms(model, s, x0, t)


# --------------------------------------------------------------------------- sampler API


def test_sampler_is_reproducible_and_reports_every_step():
    s = Schedule.linear(30)
    seen = []
    x_init = torch.randn(5, 2, generator=gen(16))
    first = ddpm.sample_ddpm(zero_model, x_init, s, generator=gen(1), callback=seen.append)
    again = ddpm.sample_ddpm(zero_model, x_init, s, generator=gen(1))
    assert torch.equal(first, again)
    assert [d["t"] for d in seen] == list(range(29, -1, -1))
    assert [d["i"] for d in seen] == list(range(30))
    assert torch.equal(seen[-1]["x"], first) and seen[0]["x0"].shape == (5, 2)


def test_bad_arguments_are_clear_errors():
    s = Schedule.linear(30)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm.sample_ddpm(zero_model, x, s, variance="large")
    with pytest.raises(ValueError, match="clip_x0"):
        ddpm.p_mean_variance(zero_model, s, x, 3, "learned", clip_x0=True)
    with pytest.raises(TypeError, match="ReverseGaussian"):
        ddpm.p_mean_variance(zero_model, s, x, 3, "learned")
    with pytest.raises(ValueError, match="shape of x"):
        ddpm.simple_loss(lambda x, t: x[:, :1], s, x)
    with pytest.raises(TypeError, match="Schedule"):
        ddpm.q_sample(s.betas, x, 0)
    with pytest.raises(ValueError, match="0..29"):
        ddpm.q_sample(s, x, 30)
    with pytest.raises(ValueError, match="decoder must be one of"):
        ddpm.variational_bound(zero_model, s, x, decoder="laplace")
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        ddpm.q_sample(s, torch.zeros(4), 0)


# --------------------------------------------------------------------------- training


def test_short_training_on_eight_gaussians_beats_the_noise():
    """1000 Adam steps of the simple loss (T = 100 cosine steps, EMA of the weights), then
    ancestral sampling from the EMA model: the energy distance to the data must fall below 0.4
    of that of the N(0, I) start (0.05-0.16 over seeds), and the share of points within 0.3
    of a mode must exceed twice that of the noise (about 0.8 against 0.14)."""
    torch.manual_seed(0)
    s = Schedule.cosine(100)
    mixture = toy.eight_gaussians()
    g = gen(17)
    result = train(
        ddpm.ddpm_mlp(s, hidden=64),
        lambda model, batch, generator: ddpm.simple_loss(model, s, batch, generator),
        lambda generator: mixture.sample(256, generator),
        1000,
        lr=1e-2,
        ema_decay=0.99,
        generator=g,
        progress=False,
    )
    assert sum(result.losses[-100:]) < sum(result.losses[:100])
    noise = torch.randn(1000, 2, generator=g)
    x = ddpm.sample_ddpm(result.ema.ema_model, noise, s, generator=g)
    reference = mixture.sample(1000, g)
    assert energy_distance(x, reference) < 0.4 * energy_distance(noise, reference)

    def near_modes(points):
        return (torch.cdist(points, mixture.means).min(1).values < 0.3).float().mean()

    assert near_modes(x) > 2 * near_modes(noise)


def test_cli_model_trains_samples_and_measures_a_toy_run(tmp_path):
    spec = runs.get_model("ddpm")
    assert spec.data == "swiss_roll"
    metrics = runs.train_run("ddpm", tmp_path, steps=20, options={"T": 25}, n_eval=200)
    assert metrics["model"] == "ddpm" and metrics["energy_distance"]["value"] > 0
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()


def test_cli_model_trains_on_images(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAI_FAST", "1")  # the shipped MNIST subset, offline
    metrics = runs.train_run(
        "ddpm",
        tmp_path,
        data="mnist",
        steps=2,
        batch_size=8,
        options={"T": 5, "schedule": "cosine", "preset": "tiny"},
        n_eval=20,
    )
    assert metrics["data"] == "mnist" and metrics["classifier_fid"] > 0
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert samples.shape == (20, 1, 28, 28) and float(samples.abs().max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_bound_weights_turn_the_kl_terms_into_weighted_noise_regression(variance):
    """kl_terms(eps + delta) - kl_terms(eps) = lambda_t |delta|^2: the KL of two Gaussians
    with one variance, computed by normal_kl, against the closed-form weight."""
    schedule = Schedule.linear(50)
    x0 = torch.randn(64, 3, generator=gen(30), dtype=F64)
    eps = torch.randn(64, 3, generator=gen(31), dtype=F64)
    delta = 0.3 * torch.randn(64, 3, generator=gen(32), dtype=F64)
    weights = ddpm.bound_weights(schedule, variance)
    assert weights.shape == (50,)
    for t in (1, 25, 49):
        shifted = ddpm.kl_terms(lambda x, s: eps + delta, schedule, x0, t, variance, noise=eps)
        exact = ddpm.kl_terms(lambda x, s: eps, schedule, x0, t, variance, noise=eps)
        expected = weights[t].to(F64) * delta.pow(2).sum(1)
        assert torch.allclose(shifted - exact, expected, rtol=1e-4, atol=1e-8), t
