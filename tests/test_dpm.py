"""Diffusion probabilistic models: the learned reverse kernel, the stochastic bound, sampling.

References: the fixed-variance DDPM kernels of ``ddpm`` (which the learned kernel must
reproduce at the ends of its variance range), the full bound of ``ddpm.variational_bound``
(which the stochastic loss must estimate without bias), and the Gaussian's entropy and
moments after training.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlai_diffusion import ddpm, runs
from dlai_diffusion.dpm import DPMReverse, dpm_loss, dpm_mlp, sample_dpm
from dlai_diffusion.schedules import Schedule
from dlai_diffusion.train import train

F64 = torch.float64
MEAN = torch.tensor([0.5, -0.3])
COV = torch.tensor([[0.30, 0.12], [0.12, 0.15]])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_data(n: int, generator, dtype=torch.float32) -> torch.Tensor:
    z = torch.randn(n, 2, generator=generator, dtype=dtype)
    return MEAN.to(dtype) + z @ torch.linalg.cholesky(COV.to(dtype)).T


class Constant(nn.Module):
    """A 'network' with fixed outputs f_mu = a, f_sigma = b (the shape (N, 2d))."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, t):
        return torch.cat([torch.full_like(x, self.a), torch.full_like(x, self.b)], dim=1)


class FromNoiseModel(nn.Module):
    """f_mu that makes the learned mean equal DDPM's mean for the noise model ``eps``, and a
    constant f_sigma (the variance end to pick)."""

    def __init__(self, eps, schedule: Schedule, f_sigma: float):
        super().__init__()
        self.eps, self.schedule, self.f_sigma = eps, schedule, f_sigma

    def forward(self, x, t):
        mean = ddpm.p_mean_variance(self.eps, self.schedule, x, t).mean
        beta = self.schedule.gather("betas", t, x)
        f_mu = (mean - (1 - beta).sqrt() * x) / beta.sqrt()
        return torch.cat([f_mu, torch.full_like(x, self.f_sigma)], dim=1)


def exact_eps(schedule: Schedule):
    """E[eps | x_t] for data N(MEAN, COV) (float64), by Gaussian conditioning."""
    m, S = MEAN.double(), COV.double()

    def eps(x, t):
        a = schedule.gather("sqrt_alpha_bars", t, x)
        s = schedule.gather("sqrt_one_minus_alpha_bars", t, x)
        cov = a[:, :, None] ** 2 * S + s[:, :, None] ** 2 * torch.eye(2, dtype=F64)
        return s * torch.linalg.solve(cov, (x - a * m).unsqueeze(-1)).squeeze(-1)

    return eps


# --------------------------------------------------------------------------- the kernel


def test_zero_outputs_give_the_forward_step_variance_and_a_shrunk_mean():
    """f_mu = f_sigma = 0: mean sqrt(1 - beta_t) x_t and variance beta_t (sigmoid), or the
    geometric mean of beta_t and beta tilde_t (interpolated, v = 1/2)."""
    s = Schedule.sohl_dickstein(10)
    x = torch.randn(10, 2, generator=gen(0), dtype=F64)
    t = torch.arange(10)
    beta = s.betas[:, None]
    sigmoid = DPMReverse(Constant(0.0, 0.0), s, "sigmoid")(x, t)
    assert isinstance(sigmoid, ddpm.ReverseGaussian) and sigmoid.x0 is None
    assert torch.allclose(sigmoid.mean, (1 - beta).sqrt() * x)
    assert torch.allclose(sigmoid.variance, beta.expand(10, 2), rtol=1e-12)
    interpolated = DPMReverse(Constant(0.0, 0.0), s, "interpolated")(x, t)
    tilde = s.posterior_log_variance_clipped.exp()[:, None]
    assert torch.allclose(interpolated.variance, (beta * tilde).sqrt().expand(10, 2))


@pytest.mark.parametrize("variance", ["sigmoid", "interpolated"])
def test_learned_variance_stays_bounded(variance):
    s = Schedule.linear(50)
    x = torch.randn(50, 2, generator=gen(1), dtype=F64)
    t = torch.arange(50)
    beta, tilde = s.betas[:, None], s.posterior_log_variance_clipped.exp()[:, None]
    for f_sigma in (-60.0, -3.0, 3.0, 60.0):
        var = DPMReverse(Constant(0.3, f_sigma), s, variance)(x, t).variance
        assert torch.isfinite(var).all()
        if variance == "sigmoid":
            assert bool(((var > 0) & (var <= 1)).all())  # (0, 1), up to rounding
        else:
            assert bool(((var >= tilde * (1 - 1e-12)) & (var <= beta * (1 + 1e-12))).all())


@pytest.mark.parametrize(
    "variance, f_sigma, fixed",
    [
        ("sigmoid", 0.0, "beta"),
        ("interpolated", 50.0, "beta"),
        ("interpolated", -50.0, "posterior"),
    ],
)
def test_kernel_reproduces_ddpm_and_its_bound_at_the_fixed_variances(variance, f_sigma, fixed):
    """With f_mu chosen to give DDPM's mean, the learned kernel at the ends of its variance
    range is DDPM's kernel, so the two bounds agree draw for draw (same generator)."""
    s = Schedule.cosine(15)
    eps = exact_eps(s)
    model = DPMReverse(FromNoiseModel(eps, s, f_sigma), s, variance)
    x0 = gaussian_data(300, gen(2), F64)
    learned = ddpm.variational_bound(model, s, x0, "learned", "gaussian", gen(3))
    reference = ddpm.variational_bound(eps, s, x0, fixed, "gaussian", gen(3))
    assert torch.allclose(learned.terms, reference.terms, rtol=1e-7, atol=1e-9)
    kernel = model(x0, torch.full((300,), 4))
    assert torch.allclose(kernel.mean, ddpm.p_mean_variance(eps, s, x0, 4, fixed).mean)


def test_every_kl_term_of_a_random_kernel_is_non_negative():
    torch.manual_seed(0)
    s = Schedule.sohl_dickstein(30)
    model = dpm_mlp(s, hidden=32, variance="interpolated")
    bound = ddpm.variational_bound(model, s, gaussian_data(200, gen(4)), "learned", "gaussian")
    assert bound.terms.shape == (200, 30) and bool((bound.kl >= 0).all())


# --------------------------------------------------------------------------- loss and training


def test_dpm_loss_is_an_unbiased_estimate_of_the_bound():
    """The mean of 200 draws of the stochastic loss (one random step per sample) equals the
    full bound (all T terms) for a fixed random network, within 4 combined standard errors."""
    torch.manual_seed(0)
    s = Schedule.sohl_dickstein(20)
    model = dpm_mlp(s, hidden=32, variance="interpolated").double()
    g = gen(5)
    x0 = gaussian_data(2000, g, F64)
    with torch.no_grad():
        full = ddpm.variational_bound(model, s, x0, "learned", "gaussian", g).total
        draws = torch.stack([dpm_loss(model, s, x0, g) for _ in range(200)])
    error = math.hypot(full.std() / math.sqrt(len(full)), draws.std() / math.sqrt(len(draws)))
    assert abs(draws.mean() - full.mean()) < 4 * error
    loss = dpm_loss(model, s, x0[:16], g)
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in model.parameters())


def test_training_on_the_bound_learns_a_gaussian():
    """800 steps on N(m, S) (T = 40, Sohl-Dickstein's schedule): the bound falls from about
    2.5 nats to within 0.15 nats of the entropy (measured: 0.05), and ancestral samples from
    the learned kernels have the data's mean (within 0.05) and covariance (within 0.04)."""
    torch.manual_seed(0)
    s = Schedule.sohl_dickstein(40)
    model = dpm_mlp(s, hidden=64)
    x_eval = gaussian_data(4000, gen(6))
    entropy = -torch.distributions.MultivariateNormal(MEAN, COV).log_prob(x_eval).mean()
    before = ddpm.variational_bound(model, s, x_eval, "learned", "gaussian", gen(7)).total.mean()
    result = train(
        model,
        lambda m, batch, generator: dpm_loss(m, s, batch, generator),
        lambda generator: gaussian_data(256, generator),
        800,
        lr=3e-3,
        ema_decay=0.99,
        generator=gen(8),
        progress=False,
    )
    trained = result.ema.ema_model
    after = ddpm.variational_bound(trained, s, x_eval, "learned", "gaussian", gen(7)).total.mean()
    assert before > entropy + 1.0
    assert entropy - 0.05 < after < entropy + 0.15
    x = sample_dpm(trained, torch.randn(4000, 2, generator=gen(9)), s, gen(10))
    assert torch.allclose(x.mean(0), MEAN, atol=0.05)
    assert torch.allclose(torch.cov(x.T), COV, atol=0.04)


# --------------------------------------------------------------------------- API


def test_sampler_is_reproducible_and_reports_every_step():
    torch.manual_seed(0)
    s = Schedule.sohl_dickstein(12)
    model = dpm_mlp(s, hidden=16)
    seen = []
    x_init = torch.randn(6, 2, generator=gen(11))
    first = sample_dpm(model, x_init, s, gen(1), callback=seen.append)
    assert torch.equal(first, sample_dpm(model, x_init, s, gen(1)))
    assert [d["t"] for d in seen] == list(range(11, -1, -1)) and seen[0]["x0"] is None


def test_bad_arguments_are_clear_errors():
    s = Schedule.sohl_dickstein(12)
    with pytest.raises(ValueError, match="variance must be one of"):
        DPMReverse(Constant(0, 0), s, "free")
    with pytest.raises(ValueError, match="mean and variance"):
        DPMReverse(lambda x, t: x, s)(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    model = dpm_mlp(s, hidden=16)
    with pytest.raises(ValueError, match="differs from the schedule"):
        sample_dpm(model, torch.zeros(3, 2), Schedule.linear(30))
    with pytest.raises(TypeError, match="Schedule"):
        DPMReverse(Constant(0, 0), s.betas)


def test_cli_model_trains_samples_and_measures_a_toy_run(tmp_path):
    spec = runs.get_model("dpm")
    assert spec.data == "swiss_roll"
    metrics = runs.train_run("dpm", tmp_path, steps=20, options={"T": 20}, n_eval=200)
    assert metrics["model"] == "dpm" and metrics["energy_distance"]["value"] > 0
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()


def test_cli_model_refuses_images(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAI_FAST", "1")
    with pytest.raises(ValueError, match="2D data"):
        runs.train_run("dpm", tmp_path, data="mnist", steps=1, batch_size=4)
