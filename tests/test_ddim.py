"""DDIM: time steps, the step of Song et al. (2021, Eq. 12), the sampler, inversion, slerp.

Independent references: DDPM's ancestral sampler with the posterior variance (the case
eta = 1 on consecutive steps, which must agree draw for draw), the exact noise predictor of
Gaussian data N(m, S) (tests/test_ddpm.py), under which the sampler must return the data's
mean and covariance, Monte-Carlo moments of q(x_s | x_0), and elementary geometry for slerp.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_ddpm import CORRELATED, GaussianData, gen

from dlai_diffusion import ddim, ddpm, toy
from dlai_diffusion.schedules import Schedule

F64 = torch.float64


def small_net(schedule: Schedule, seed: int = 0):
    """A fixed, smooth, untrained noise network eps(x, t) in float64."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ddpm.ddpm_mlp(schedule, hidden=16, depth=2).double()


# --------------------------------------------------------------------------- time steps


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("T, n", [(1000, 50), (1000, 10), (100, 100), (30, 29), (7, 2)])
def test_timesteps_decrease_from_the_last_step_to_zero(spacing, T, n):
    tau = ddim.ddim_timesteps(T, n, spacing)
    assert tau.dtype == torch.long and tau.shape == (n,)
    assert int(tau[0]) == T - 1 and int(tau[-1]) == 0
    assert bool((tau[:-1] > tau[1:]).all()), "strictly decreasing, so no step repeats"


def test_timesteps_spacings():
    assert ddim.ddim_timesteps(10, 10).tolist() == list(range(9, -1, -1))
    assert ddim.ddim_timesteps(1000, 10).tolist() == list(range(999, -1, -111))
    assert ddim.ddim_timesteps(1000, 1).tolist() == [999]
    quadratic = ddim.ddim_timesteps(1000, 10, "quadratic")
    assert quadratic.tolist() == [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]
    dense = ddim.ddim_timesteps(1000, 50, "quadratic")
    assert (dense[-10:].diff() >= -8).all() and (ddim.ddim_timesteps(1000, 50).diff() <= -20).all()


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((10, 11), ValueError, "n_steps must lie in 1..T"),
        ((10, 0), ValueError, "n_steps"),
        ((0, 1), ValueError, "T must be"),
        ((10.0, 5), TypeError, "T must be"),
        ((10, 5, "cosine"), ValueError, "spacing must be one of"),
    ],
)
def test_timesteps_validation(args, error, message):
    with pytest.raises(error, match=message):
        ddim.ddim_timesteps(*args)


# --------------------------------------------------------------------------- the step


def test_sigma_of_eta_one_is_the_ddpm_posterior_standard_deviation():
    s = Schedule.linear(200)
    t = torch.arange(1, 200)
    sigma = ddim.ddim_sigma(s, t, t - 1, eta=1.0)
    assert torch.allclose(sigma**2, s.posterior_variance[1:], rtol=1e-10)
    assert ddim.ddim_sigma(s, 50, 49, eta=0.0) == 0.0
    assert ddim.ddim_sigma(s, 0, -1, eta=1.0) == 0.0  # the last step to the data: no noise
    half = ddim.ddim_sigma(s, 120, 40, eta=0.5)
    ab_t, ab_s = s.alpha_bars[120].item(), s.alpha_bars[40].item()
    assert math.isclose(
        half, 0.5 * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)), rel_tol=1e-12
    )


@pytest.mark.parametrize("clip_x0", [False, True])
def test_eta_one_on_consecutive_steps_is_ancestral_ddpm_with_the_posterior_variance(clip_x0):
    """Draw for draw: the same generator seed gives the same noise to both samplers."""
    s = Schedule.cosine(60)
    net = small_net(s)
    x = 1.5 * torch.randn(9, 2, generator=gen(0), dtype=F64)
    for t in (59, 30, 1, 0):
        step = ddim.ddim_step(net, s, x, t, t - 1, eta=1.0, generator=gen(t), clip_x0=clip_x0)
        reference = ddpm.p_sample(net, s, x, t, "posterior", clip_x0, generator=gen(t))
        assert torch.allclose(step, reference, rtol=1e-10, atol=1e-12), t
    sample = ddim.sample_ddim(net, x, s, n_steps=60, eta=1.0, clip_x0=clip_x0, generator=gen(1))
    reference = ddpm.sample_ddpm(net, x, s, "posterior", clip_x0, generator=gen(1))
    assert torch.allclose(sample, reference, rtol=1e-9, atol=1e-10)


def test_a_step_with_the_true_noise_keeps_the_marginals_for_every_eta():
    """The point of Song et al.'s sigma(eta) (their Lemma 1): if x_t ~ q(x_t | x_0) and the
    model knows the noise, the step lands on q(x_s | x_0) = N(sqrt(ab_s) x_0, (1 - ab_s) I)
    whatever eta. 40000 draws, mean and variance within 5 standard errors."""
    s = Schedule.linear(1000)
    n, t, t_prev = 40_000, 700, 300
    x0 = torch.full((n, 1), 0.8, dtype=F64)
    eps = torch.randn(n, 1, generator=gen(2), dtype=F64)
    xt = ddpm.q_sample(s, x0, t, eps)
    ab_s = s.alpha_bars[t_prev].item()
    for eta in (0.0, 0.3, 1.0):
        xs = ddim.ddim_step(lambda x, steps: eps, s, xt, t, t_prev, eta, generator=gen(3))
        var = 1 - ab_s
        assert abs(xs.mean().item() - math.sqrt(ab_s) * 0.8) < 5 * math.sqrt(var / n)
        assert abs(xs.var().item() / var - 1) < 5 * math.sqrt(2 / n)


def test_per_sample_steps_match_a_shared_step_and_noise_can_be_given():
    s = Schedule.linear(100)
    net = small_net(s, 1)
    x = torch.randn(6, 2, generator=gen(4), dtype=F64)
    z = torch.randn(6, 2, generator=gen(5), dtype=F64)
    shared = ddim.ddim_step(net, s, x, 70, 20, eta=0.7, noise=z)
    per_sample = ddim.ddim_step(net, s, x, torch.full((6,), 70), torch.full((6,), 20), 0.7, noise=z)
    assert torch.allclose(shared, per_sample, rtol=1e-12)
    mixed = ddim.ddim_step(net, s, x, torch.tensor([70, 70, 5, 5, 99, 1]), -1, eta=0.0)
    alone = ddim.ddim_step(net, s, x[2:4], 5, -1, eta=0.0)
    assert torch.allclose(mixed[2:4], alone, rtol=1e-12)


def test_eta_zero_is_deterministic_and_draws_nothing():
    s = Schedule.linear(200)
    net = small_net(s, 2)
    x = torch.randn(5, 2, generator=gen(6), dtype=F64)
    g = gen(7)
    first = ddim.sample_ddim(net, x, s, n_steps=20, eta=0.0, generator=g)
    assert torch.equal(g.get_state(), gen(7).get_state()), "eta = 0 draws no random numbers"
    assert torch.equal(first, ddim.sample_ddim(net, x, s, n_steps=20, generator=gen(8)))
    noisy = ddim.sample_ddim(net, x, s, n_steps=20, eta=1.0, generator=gen(7))
    assert not torch.allclose(first, noisy)


def test_sampler_reports_every_step_and_follows_the_input_dtype():
    s = Schedule.linear(100)
    seen = []
    x = torch.randn(4, 1, 3, 3, generator=gen(9))
    out = ddim.sample_ddim(lambda x, t: 0.1 * x, x, s, n_steps=8, callback=seen.append)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert [d["t"] for d in seen] == ddim.ddim_timesteps(100, 8).tolist()
    assert [d["t_prev"] for d in seen][-1] == -1 and [d["i"] for d in seen] == list(range(8))
    assert torch.equal(seen[-1]["x"], out) and seen[-1]["x0"].shape == x.shape


# --------------------------------------------------------------------------- sample quality


def test_fifty_steps_with_the_exact_noise_predictor_recover_the_gaussian():
    """Data N(m, S), S correlated, T = 1000 linear steps, E[eps | x_t] exact, 20000 samples.
    eta = 0, 50 uniform steps: mean within 0.02 (5 standard errors), covariance entries within
    0.045 (the Euler bias of 50 steps is about -0.03 on the variance 0.30, 10 %). The sampler is
    a first-order method: 200 steps must shrink the covariance error at least twofold (it is
    about -0.01), and the quadratic spacing beats the uniform one at 50 steps."""
    s = Schedule.linear(1000)
    eps = CORRELATED.exact_eps(s)
    x_init = torch.randn(20_000, 2, generator=gen(10), dtype=F64)

    def covariance_error(n_steps, spacing="uniform"):
        x = ddim.sample_ddim(eps, x_init, s, n_steps, spacing=spacing)
        assert torch.allclose(x.mean(0), CORRELATED.m, atol=0.02)
        return (torch.cov(x.T) - CORRELATED.S).abs().max().item()

    coarse = covariance_error(50)
    assert coarse < 0.045
    assert covariance_error(200) < coarse / 2
    assert covariance_error(50, "quadratic") < coarse


def test_stochastic_ddim_also_recovers_the_gaussian():
    """eta = 1 with all 200 steps of a cosine schedule (that is DDPM): covariance within 0.02;
    with 50 of them the noisy sampler is worse than the deterministic one, as Song et al.
    found (Table 1): the variance 0.5 comes out about 0.45, so within 0.08."""
    data = GaussianData([0.3, -0.2], [[0.5, 0.1], [0.1, 0.25]])
    s = Schedule.cosine(200)
    x_init = torch.randn(20_000, 2, generator=gen(11), dtype=F64)
    for n_steps, tolerance in ((200, 0.02), (50, 0.08)):
        x = ddim.sample_ddim(data.exact_eps(s), x_init, s, n_steps, eta=1.0, generator=gen(12))
        assert torch.allclose(x.mean(0), data.m, atol=0.02)
        assert torch.allclose(torch.cov(x.T), data.S, atol=tolerance), n_steps
    # At 50 steps the deterministic sampler is the closer one (measured 0.024 against 0.055;
    # the Monte-Carlo error of a covariance entry here is about 0.005).
    deterministic = ddim.sample_ddim(data.exact_eps(s), x_init, s, 50, eta=0.0)
    error_eta0 = (torch.cov(deterministic.T) - data.S).abs().max()
    assert (torch.cov(x.T) - data.S).abs().max() > error_eta0 + 0.01


# --------------------------------------------------------------------------- inversion


def test_encoding_then_decoding_returns_the_data_and_the_latent():
    """Exact noise predictor of N(m, S) (smooth in x): the eta = 0 round trip data -> latent
    -> data errs by O(1 / n_steps): with 1000 steps the largest coordinate error over 2000
    points is below 0.02 (measured 0.007), and re-encoding the decoded data gives the latent
    back within 0.06 (measured 0.025); halving the steps about doubles the error. The latents
    of the data are standard normal (the prior), as the probability-flow map promises."""
    s = Schedule.linear(1000)
    eps = CORRELATED.exact_eps(s)
    x0 = CORRELATED.sample(2000, gen(13))
    errors = {}
    for n_steps in (250, 1000):
        z = ddim.encode_ddim(eps, x0, s, n_steps)
        back = ddim.sample_ddim(eps, z, s, n_steps)
        errors[n_steps] = (back - x0).abs().max().item()
        again = ddim.encode_ddim(eps, back, s, n_steps)
        assert (again - z).abs().max() < 0.06 * 1000 / n_steps
    assert errors[1000] < 0.02
    assert 2.5 < errors[250] / errors[1000] < 5.5, errors
    assert torch.allclose(z.mean(0), torch.zeros(2, dtype=F64), atol=0.1)
    assert torch.allclose(torch.cov(z.T), torch.eye(2, dtype=F64), atol=0.1)


def test_encoder_visits_the_steps_in_increasing_order():
    s = Schedule.cosine(100)
    seen = []
    eps = CORRELATED.exact_eps(s)
    x0 = CORRELATED.sample(50, gen(14))
    z = ddim.encode_ddim(eps, x0, s, n_steps=10, spacing="quadratic", callback=seen.append)
    assert [d["t"] for d in seen] == ddim.ddim_timesteps(100, 10, "quadratic").flip(0).tolist()
    assert torch.equal(seen[-1]["x"], z) and torch.allclose(seen[0]["x0"], x0, atol=1e-2)


# --------------------------------------------------------------------------- slerp


def test_slerp_endpoints_and_norms():
    g = gen(15)
    z0, z1 = torch.randn(2, 3, 8, 8, generator=g, dtype=F64)
    z1 = z1 * z0.norm() / z1.norm()  # equal norms
    alpha = torch.linspace(0, 1, 9, dtype=F64)
    path = ddim.slerp(z0.expand(9, 3, 8, 8), z1.expand(9, 3, 8, 8), alpha)
    assert path.shape == (9, 3, 8, 8)
    assert torch.allclose(path[0], z0) and torch.allclose(path[-1], z1)
    norms = path.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, z0.norm().item()), rtol=1e-10)
    linear_mid = 0.5 * (z0 + z1)
    assert linear_mid.norm() < 0.8 * z0.norm(), "independent latents: the chord cuts inside"
    # equal angular steps: consecutive points are equally far apart
    steps = path.flatten(1).diff(dim=0).norm(dim=1)
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-10)


def test_slerp_on_the_unit_circle_and_for_parallel_latents():
    e1, e2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    mid = ddim.slerp(e1, e2, 0.5)
    assert torch.allclose(mid, torch.tensor([1.0, 1.0], dtype=F64) / math.sqrt(2))
    third = ddim.slerp(e1, e2, 1 / 3)
    assert torch.allclose(
        third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)], dtype=F64)
    )
    same = ddim.slerp(e1, 2 * e1, 0.25)
    assert torch.isfinite(same).all() and torch.allclose(same, 1.25 * e1)


# --------------------------------------------------------------------------- errors


def test_bad_arguments_are_clear_errors():
    s = Schedule.linear(50)
    x = torch.zeros(4, 2)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="eta must lie in"):
        ddim.sample_ddim(zero, x, s, eta=1.5)
    with pytest.raises(TypeError, match="eta"):
        ddim.ddim_step(zero, s, x, 3, 2, eta=None)
    with pytest.raises(ValueError, match="n_steps"):
        ddim.sample_ddim(zero, x, s, n_steps=51)
    with pytest.raises(ValueError, match="spacing"):
        ddim.encode_ddim(zero, x, s, spacing="log")
    with pytest.raises(ValueError, match="t_prev must be earlier"):
        ddim.ddim_step(zero, s, x, 3, 3)
    with pytest.raises(ValueError, match="t_prev must lie in -1..49"):
        ddim.ddim_step(zero, s, x, 3, -2)
    with pytest.raises(ValueError, match="t must lie in 0..49"):
        ddim.ddim_step(zero, s, x, 50, 2)
    with pytest.raises(ValueError, match="noise"):
        ddim.ddim_step(zero, s, x, 3, 2, eta=1.0, noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape of x"):
        ddim.sample_ddim(lambda x, t: x[:, :1], x, s)
    with pytest.raises(TypeError, match="Schedule"):
        ddim.sample_ddim(zero, x, s.betas)
    with pytest.raises(ValueError, match=r"x_init must be a floating tensor"):
        ddim.sample_ddim(zero, torch.zeros(4), s)
    with pytest.raises(ValueError, match="alpha must lie in"):
        ddim.slerp(x, x, 1.5)
    with pytest.raises(ValueError, match="z1 must have the shape"):
        ddim.slerp(x, x[:2], 0.5)
    with pytest.raises(ValueError, match="alpha must be a number or a tensor of shape"):
        ddim.slerp(x, x, torch.rand(3))


def test_mixture_eps_is_the_exact_noise_predictor():
    """For a one-component mixture it is the Gaussian conditioning formula of test_ddpm, and
    for any mixture it is the rescaled exact score of the noised mixture, per sample's step."""
    s = Schedule.linear(1000)
    single = toy.GaussianMixture([[0.4, -1.0]], math.sqrt(0.3), dtype=F64)
    gaussian = GaussianData([0.4, -1.0], 0.3 * torch.eye(2, dtype=F64))
    x = torch.randn(6, 2, generator=gen(16), dtype=F64)
    t = torch.tensor([0, 10, 10, 300, 999, 500])
    assert torch.allclose(ddim.mixture_eps(single, s)(x, t), gaussian.exact_eps(s)(x, t))
    eight = toy.eight_gaussians(dtype=F64)
    got = ddim.mixture_eps(eight, s)(x, t)
    for i, step in enumerate(t.tolist()):
        a, b = s.sqrt_alpha_bars[step].item(), s.sqrt_one_minus_alpha_bars[step].item()
        expected = -b * eight.diffuse(a, b).score(x[i : i + 1])
        assert torch.allclose(got[i : i + 1], expected, rtol=1e-12)
    with pytest.raises(TypeError, match="mixture"):
        ddim.mixture_eps(gaussian, s)
