"""Flow matching against closed forms: the Gaussian-to-Gaussian velocity, the exact velocity
and score of a Gaussian mixture's path, moments of the ODE's output, straightness."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from dlai_diffusion import flow_matching as fm
from dlai_diffusion import runs, toy, train
from dlai_diffusion.metrics import METRICS, compare_to_floor, two_sample_floor

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
STD = 0.5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian_target(x, t):
    return fm.gaussian_velocity(x, t, MEAN.to(x), STD)


def _mixture() -> toy.GaussianMixture:
    return toy.GaussianMixture(
        [[-1.0, 0.5], [1.2, 1.0], [0.3, -1.2]], [0.3, 0.2, 0.4], [0.5, 0.2, 0.3], dtype=F64
    )


# --------------------------------------------------------------------------- the path


def test_linear_path_ends_and_velocity_is_its_time_derivative():
    x0 = torch.randn(6, 3, generator=_gen(0), dtype=F64)
    x1 = torch.randn(6, 3, generator=_gen(1), dtype=F64)
    for sigma_min in (0.0, 0.1):
        start, _ = fm.linear_path(x0, x1, 0.0, sigma_min)
        end, _ = fm.linear_path(x0, x1, 1.0, sigma_min)
        assert torch.allclose(start, x0) and torch.allclose(end, x1 + sigma_min * x0)
        t = torch.rand(6, generator=_gen(2), dtype=F64) * 0.8 + 0.1
        h = 1e-6
        ahead, u = fm.linear_path(x0, x1, t + h, sigma_min)
        behind, _ = fm.linear_path(x0, x1, t - h, sigma_min)
        assert torch.allclose((ahead - behind) / (2 * h), u, atol=1e-8)
    assert torch.allclose(fm.linear_path(x0, x1, 0.3)[1], x1 - x0)


def test_gaussian_velocity_is_the_regression_of_the_target_on_x_t():
    """Monte Carlo: at fixed t, least squares of u_t on (1, x_t) recovers v*(x, t)."""
    n, t = 200_000, 0.6
    g = _gen(3)
    x0 = torch.randn(n, 2, generator=g, dtype=F64)
    x1 = MEAN + STD * torch.randn(n, 2, generator=g, dtype=F64)
    xt, u = fm.linear_path(x0, x1, t)
    design = torch.cat([torch.ones(n, 1, dtype=F64), xt], 1)
    coef = torch.linalg.lstsq(design, u).solution  # u ~ b + x W
    probe = torch.tensor([[0.2, -0.1], [1.0, 0.7], [-0.5, 0.4]], dtype=F64)
    fitted = coef[0] + probe @ coef[1:]
    assert torch.allclose(fitted, _gaussian_target(probe, t), atol=0.03)  # about 5 s.e.


def test_mixture_velocity_with_one_component_is_the_gaussian_velocity():
    single = toy.GaussianMixture(MEAN[None], STD, dtype=F64)
    x = torch.randn(50, 2, generator=_gen(4), dtype=F64)
    t = torch.rand(50, generator=_gen(5), dtype=F64)
    for sigma_min in (0.0, 0.05):
        expected = fm.gaussian_velocity(x, t, MEAN, STD, sigma_min)
        assert torch.allclose(fm.mixture_velocity(single, sigma_min)(x, t), expected)


# --------------------------------------------------------------------------- the loss


def test_conditional_loss_is_lowest_at_the_exact_velocity_by_the_squared_perturbation():
    """L(v* + delta) - L(v*) = |delta|^2 / d per coordinate: the conditional and marginal
    losses differ by a constant (Lipman et al., 2023, Theorem 2)."""
    n = 100_000
    g = _gen(6)
    x1 = MEAN + STD * torch.randn(n, 2, generator=g, dtype=F64)
    x0 = torch.randn(n, 2, generator=g, dtype=F64)
    t = torch.rand(n, generator=g, dtype=F64)
    best = fm.flow_matching_loss(_gaussian_target, x1, x0=x0, t=t).item()
    for delta in ([0.3, 0.0], [-0.2, 0.2], [0.05, 0.05]):
        shift = torch.tensor(delta, dtype=F64)
        perturbed = fm.flow_matching_loss(
            lambda x, s, shift=shift: _gaussian_target(x, s) + shift, x1, x0=x0, t=t
        ).item()
        expected = shift.pow(2).mean().item()
        assert perturbed > best
        assert perturbed - best == pytest.approx(expected, rel=0.05, abs=5e-4)
    scaled = fm.flow_matching_loss(lambda x, s: 1.1 * _gaussian_target(x, s), x1, x0=x0, t=t)
    assert scaled.item() > best


def test_loss_draws_from_the_generator_and_reduces():
    model = fm.flow_mlp(2, hidden=16, depth=1)
    x1 = torch.randn(8, 2, generator=_gen(7))
    a = fm.flow_matching_loss(model, x1, _gen(8))
    b = fm.flow_matching_loss(model, x1, _gen(8))
    assert torch.equal(a, b) and a.requires_grad
    per_sample = fm.flow_matching_loss(model, x1, _gen(8), reduction="none")
    assert per_sample.shape == (8,) and torch.allclose(per_sample.mean(), a)


def test_flow_matching_learns_the_gaussian_velocity():
    """A small MLP trained briefly matches the closed form on the path's own points."""
    torch.manual_seed(0)
    model = fm.flow_mlp(2, hidden=64, depth=2)
    mean32 = MEAN.float()

    def data(g):
        return mean32 + STD * torch.randn(256, 2, generator=g)

    result = train.train(
        model,
        fm.flow_matching_loss,
        data,
        300,
        lr=3e-3,
        ema_decay=0.99,
        generator=_gen(9),
        progress=False,
    )
    net = result.ema.ema_model
    g = _gen(10)
    n = 2000
    t = 0.05 + 0.9 * torch.rand(n, generator=g)
    x1 = mean32 + STD * torch.randn(n, 2, generator=g)
    xt, _ = fm.linear_path(torch.randn(n, 2, generator=g), x1, t)
    with torch.no_grad():
        learned = net(xt, t).double()
    exact = _gaussian_target(xt.double(), t.double())
    relative = (learned - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean()
    assert relative < 0.005, f"relative squared error {relative:.4f}"  # measured 0.0016


# --------------------------------------------------------------------------- sampling


def test_ode_with_the_exact_velocity_maps_the_prior_to_the_target_gaussian():
    n = 20_000
    x = torch.randn(n, 2, generator=_gen(11), dtype=F64)
    out = fm.sample_flow(_gaussian_target, x, n_steps=80, method="heun")
    se = STD / math.sqrt(n)
    assert (out.mean(0) - MEAN).abs().max() < 5 * se
    assert (out.std(0) / STD - 1).abs().max() < 5 / math.sqrt(2 * n)
    # The map is affine: the output is exactly m + s x_0 up to the solver's error.
    assert torch.allclose(out, MEAN + STD * x, atol=3e-4)


def test_exact_mixture_velocity_samples_the_mixture_at_the_two_sample_floor():
    """One ratio to the floor scatters by about 25% even for true samples, so the mean over
    six independent batches of 2000 is compared (its spread is about 0.1)."""
    mixture = toy.eight_gaussians(dtype=F64)
    g = _gen(12)
    x = torch.randn(6 * 2000, 2, generator=g, dtype=F64)
    out = fm.sample_flow(fm.mixture_velocity(mixture), x, n_steps=50, method="heun")
    floor = two_sample_floor(mixture.sample, "sliced_wasserstein", 2000, generator=g).mean
    distance = METRICS["sliced_wasserstein"]
    ratios = [distance(batch, mixture.sample(2000, g)) / floor for batch in out.split(2000)]
    assert sum(ratios) / len(ratios) < 1.2, ratios
    # A velocity that ignores the responsibilities (each component's own flow, averaged with
    # the weights) does not reach the mixture: the test can tell.
    single = fm.gaussian_velocity
    wrong = fm.sample_flow(lambda z, t: single(z, t, mixture.mean(), 1.0), x[:2000], 20, "heun")
    assert compare_to_floor(wrong, mixture.sample, generator=g).ratio > 2


def test_euler_with_many_steps_agrees_with_heun_and_heun_is_second_order():
    velocity = fm.mixture_velocity(_mixture())
    x = torch.randn(500, 2, generator=_gen(14), dtype=F64)
    reference = fm.sample_flow(velocity, x, 800, "heun")
    euler = fm.sample_flow(velocity, x, 2000, "euler")
    assert (euler - reference).abs().max() < 0.02  # Euler's error is O(1 / n_steps)
    errors = {
        n: (fm.sample_flow(velocity, x, n, "heun") - reference).abs().mean() for n in (25, 50)
    }
    assert 3.0 < errors[25] / errors[50] < 5.0  # halving h divides the error by about 4
    midpoint = fm.sample_flow(velocity, x, 200, "midpoint")
    assert (midpoint - reference).abs().max() < 1e-3


def test_sampler_runs_backwards_and_calls_back():
    x = torch.randn(100, 2, generator=_gen(15), dtype=F64)
    seen = []
    out = fm.sample_flow(_gaussian_target, x, 30, "heun", callback=seen.append)
    assert [s["i"] for s in seen] == list(range(30)) and seen[-1]["t"] == pytest.approx(1.0)
    back = fm.sample_flow(_gaussian_target, out, 30, "heun", t_start=1.0, t_end=0.0)
    assert torch.allclose(back, x, atol=1e-3)
    trajectory = fm.flow_trajectory(_gaussian_target, x, 30, "heun")
    assert trajectory.shape == (31, 100, 2) and torch.equal(trajectory[-1], out)


def test_rk45_uses_the_adaptive_solver():
    x = torch.randn(200, 2, generator=_gen(16), dtype=F64)
    out = fm.sample_flow(fm.mixture_velocity(_mixture()), x, method="rk45", rtol=1e-7, atol=1e-7)
    reference = fm.sample_flow(fm.mixture_velocity(_mixture()), x, 800, "heun")
    assert (out - reference).abs().max() < 1e-3


# --------------------------------------------------------------------------- velocity and score


@pytest.mark.parametrize("sigma_min", [0.0, 0.02])
def test_velocity_to_score_matches_the_exact_score_of_the_marginal_mixture(sigma_min):
    mixture = _mixture()
    velocity = fm.mixture_velocity(mixture, sigma_min)
    x = 1.5 * torch.randn(300, 2, generator=_gen(17), dtype=F64)
    for t in (0.1, 0.5, 0.9, 0.99):
        exact_score = fm.marginal_mixture(mixture, t, sigma_min).score(x)
        v = velocity(x, t)
        assert torch.allclose(fm.velocity_to_score(v, x, t, sigma_min), exact_score, atol=1e-9)
        assert torch.allclose(fm.score_to_velocity(exact_score, x, t, sigma_min), v, atol=1e-9)
    # At t = 0 the marginal is N(0, I): its score is -x.
    assert torch.allclose(fm.velocity_to_score(velocity(x, 0.0), x, 0.0, sigma_min), -x)


def test_marginal_mixture_is_the_law_of_x_t():
    mixture = _mixture()
    g = _gen(18)
    n, t = 100_000, 0.7
    xt, _ = fm.linear_path(torch.randn(n, 2, generator=g, dtype=F64), mixture.sample(n, g), t)
    law = fm.marginal_mixture(mixture, t)
    assert torch.allclose(xt.mean(0), law.mean(), atol=0.01)
    assert torch.allclose(torch.cov(xt.T), law.covariance(), atol=0.02)


# --------------------------------------------------------------------------- straightness


def test_straightness_is_zero_for_lines_and_known_for_a_rotation():
    x = torch.randn(50, 2, generator=_gen(19), dtype=F64)
    constant = fm.flow_trajectory(lambda z, t: torch.ones_like(z), x, 10)
    assert fm.straightness(constant) == pytest.approx(0.0, abs=1e-20)

    def rotation(z, t):
        return torch.stack([-z[:, 1], z[:, 0]], 1)

    unit = x / x.norm(dim=1, keepdim=True)
    path = fm.flow_trajectory(rotation, unit, 2000, "heun")
    # |x_0|^2 - |chord|^2 for a unit-speed arc of one radian: 2 cos(1) - 1.
    assert fm.straightness(path) == pytest.approx(2 * math.cos(1.0) - 1, rel=1e-3)
    normalized = fm.straightness(path, normalized=True)
    assert normalized == pytest.approx((2 * math.cos(1.0) - 1) / (2 - 2 * math.cos(1.0)), rel=1e-3)


def test_reflow_pairs_are_the_flow_of_their_noise():
    velocity = fm.mixture_velocity(_mixture().to(dtype=torch.float32))
    x0, x1 = fm.reflow_pairs(velocity, 64, (2,), n_steps=20, generator=_gen(20))
    assert x0.shape == x1.shape == (64, 2)
    assert torch.equal(x0, torch.randn(64, 2, generator=_gen(20)))
    euler = x0.clone()  # 20 Euler steps written out, independent of sample_flow
    for k in range(20):
        euler = euler + velocity(euler, torch.full((64,), k / 20)) / 20
    assert torch.allclose(x1, euler, atol=1e-5)


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="t must lie in"):
        fm.linear_path(x, x, 1.5)
    with pytest.raises(ValueError, match="one time per sample"):
        fm.linear_path(x, x, torch.rand(3))
    with pytest.raises(ValueError, match="x0 must be a tensor of the shape"):
        fm.linear_path(torch.randn(4, 3), x, 0.5)
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor"):
        fm.flow_matching_loss(fm.flow_mlp(), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="sigma_min"):
        fm.linear_path(x, x, 0.5, sigma_min=1.0)
    with pytest.raises(ValueError, match="model\\(x_t, t\\) must be a tensor of the shape"):
        fm.flow_matching_loss(lambda z, t: z[:, :1], x)
    with pytest.raises(ValueError, match="method must be one of"):
        fm.sample_flow(_gaussian_target, x, 4, "rk4")
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        fm.sample_flow(_gaussian_target, x, 0)
    with pytest.raises(ValueError, match="x_init must be a floating tensor"):
        fm.sample_flow(_gaussian_target, torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="t must be < 1"):
        fm.velocity_to_score(x, x, 1.0)
    with pytest.raises(ValueError, match="t must be > 0"):
        fm.score_to_velocity(x, x, 0.0)
    with pytest.raises(ValueError, match="t must be a number in \\(0, 1\\]"):
        fm.marginal_mixture(_mixture(), 0.0)
    with pytest.raises(ValueError, match="trajectory must"):
        fm.straightness(torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match="reduction"):
        fm.flow_matching_loss(_gaussian_target, x.double(), reduction="sum")


# --------------------------------------------------------------------------- command line


def test_cli_registration_trains_and_samples(tmp_path):
    assert "flow" in runs.models()
    metrics = runs.train_run(
        "flow", tmp_path, steps=150, options={"n_steps": 10}, n_eval=300, device="cpu"
    )
    noise = torch.randn(300, 2, generator=_gen(21))
    reference = compare_to_floor(noise, partial(toy.sample, "moons"), "energy_distance")
    assert metrics["energy_distance"]["ratio"] < reference.ratio / 3
    assert torch.load(tmp_path / "samples.pt", weights_only=True).shape == (300, 2)


def test_cli_mnist_run_reports_classifier_metrics(tmp_path):
    options = {"preset": "tiny", "n_steps": 2, "method": "euler"}
    metrics = runs.train_run(
        "flow", tmp_path, data="mnist", steps=2, batch_size=8, options=options, n_eval=50
    )
    assert metrics["classifier_fid"] > 0 and 0 < metrics["classifier_confidence"] <= 1
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert samples.shape == (50, 1, 28, 28) and samples.abs().max() <= 1
