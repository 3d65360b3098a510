"""The lecture 08 checks accept correct answers and reject stubs and the usual mistakes."""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion import sde, toy
from dlai_diffusion.checks import lecture08 as check

# --------------------------------------------------------------------------- answers


def vp_marginal(t, beta_min, beta_max):
    integral = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    return torch.exp(-0.5 * integral), torch.sqrt(1 - torch.exp(-integral))


def vp_marginal_with_package(t, beta_min, beta_max):
    return sde.VPSDE(beta_min, beta_max).marginal(t)


def euler_maruyama_step(drift, diffusion, x, t, dt, z):
    return x + drift(x, t) * dt + diffusion(t) * math.sqrt(abs(dt)) * z


def reverse_sde_step(process, score_fn, x, t, dt, z):
    g = float(process.diffusion(t))
    return x - (process.drift(x, t) - g**2 * score_fn(x, t)) * dt + g * math.sqrt(dt) * z


def reverse_sde_step_with_package(process, score_fn, x, t, dt, z):
    tt = torch.full((x.shape[0],), t, dtype=x.dtype)
    drift = sde.reverse_drift(process, score_fn)(x, tt)
    return x - drift * dt + float(process.diffusion(t)) * math.sqrt(dt) * z


def stub(*args):
    raise NotImplementedError()


# --------------------------------------------------------------------------- mistakes


def vp_alpha_squared(t, beta_min, beta_max):
    alpha, sigma = vp_marginal(t, beta_min, beta_max)
    return alpha**2, sigma


def vp_no_half_t2(t, beta_min, beta_max):
    integral = beta_min * t + (beta_max - beta_min) * t**2
    return torch.exp(-0.5 * integral), torch.sqrt(1 - torch.exp(-integral))


def vp_variance_not_std(t, beta_min, beta_max):
    alpha, sigma = vp_marginal(t, beta_min, beta_max)
    return alpha, sigma**2


def em_dt_noise(drift, diffusion, x, t, dt, z):
    return x + drift(x, t) * dt + diffusion(t) * dt * z


def em_signed_sqrt(drift, diffusion, x, t, dt, z):
    return x + drift(x, t) * dt + diffusion(t) * math.copysign(math.sqrt(abs(dt)), dt) * z


def em_no_g(drift, diffusion, x, t, dt, z):
    return x + drift(x, t) * dt + math.sqrt(abs(dt)) * z


def em_no_noise(drift, diffusion, x, t, dt, z):
    return x + drift(x, t) * dt


def reverse_plus_score(process, score_fn, x, t, dt, z):
    g = float(process.diffusion(t))
    return x - (process.drift(x, t) + g**2 * score_fn(x, t)) * dt + g * math.sqrt(dt) * z


def reverse_half(process, score_fn, x, t, dt, z):
    g = float(process.diffusion(t))
    return x - (process.drift(x, t) - 0.5 * g**2 * score_fn(x, t)) * dt + g * math.sqrt(dt) * z


def reverse_forward_sign(process, score_fn, x, t, dt, z):
    g = float(process.diffusion(t))
    return x + (process.drift(x, t) - g**2 * score_fn(x, t)) * dt + g * math.sqrt(dt) * z


def reverse_g_not_squared(process, score_fn, x, t, dt, z):
    g = float(process.diffusion(t))
    return x - (process.drift(x, t) - g * score_fn(x, t)) * dt + g * math.sqrt(dt) * z


def reverse_no_noise(process, score_fn, x, t, dt, z):
    g = float(process.diffusion(t))
    return x - (process.drift(x, t) - g**2 * score_fn(x, t)) * dt


def _reverse_run(step, n=600, n_steps=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    vp = sde.VPSDE()
    score = sde.mixture_score(toy.eight_gaussians(dtype=torch.float64), vp)
    dt = (1 - 1e-3) / n_steps
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    for k in range(n_steps):
        z = torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = step(vp, score, x, 1.0 - k * dt, dt, z)
    return x


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("answer", [vp_marginal, vp_marginal_with_package])
def test_vp_marginal_accepts_correct_answers(answer, capsys):
    check.vp_marginal(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (stub, "not implemented"),
        (vp_alpha_squared, "alpha squared"),
        (vp_no_half_t2, "integrate"),
        (vp_variance_not_std, "square root"),
    ],
)
def test_vp_marginal_rejects_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        check.vp_marginal(wrong)


def test_euler_maruyama_step_accepts_the_answer(capsys):
    check.euler_maruyama_step(euler_maruyama_step)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (stub, "not implemented"),
        (em_dt_noise, "sqrt"),
        (em_signed_sqrt, "wrong Euler-Maruyama step"),
        (em_no_g, "diffusion coefficient"),
        (em_no_noise, "noise term is missing"),
    ],
)
def test_euler_maruyama_step_rejects_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        check.euler_maruyama_step(wrong)


def test_euler_maruyama_step_names_nan_for_negative_dt():
    def naive(drift, diffusion, x, t, dt, z):
        return x + drift(x, t) * dt + diffusion(t) * torch.tensor(dt).sqrt() * z

    with pytest.raises(AssertionError, match="abs"):
        check.euler_maruyama_step(naive)


@pytest.mark.parametrize("answer", [reverse_sde_step, reverse_sde_step_with_package])
def test_reverse_sde_step_accepts_correct_answers(answer, capsys):
    check.reverse_sde_step(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (stub, "not implemented"),
        (reverse_plus_score, "wrong sign"),
        (reverse_half, "probability-flow"),
        (reverse_forward_sign, "subtracts"),
        (reverse_g_not_squared, r"g\(t\)\^2, not g\(t\)"),
        (reverse_no_noise, "noise term is missing"),
    ],
)
def test_reverse_sde_step_rejects_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        check.reverse_sde_step(wrong)


def test_reverse_samples_accepts_a_correct_run_and_the_package(capsys):
    check.reverse_samples(_reverse_run(reverse_sde_step))
    vp = sde.VPSDE()
    score = sde.mixture_score(toy.eight_gaussians(dtype=torch.float64), vp)
    x = vp.prior_sample((600, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    check.reverse_samples(sde.sample_reverse_sde(score, vp, x, n_steps=200))
    assert capsys.readouterr().out.count("✔") == 2


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (lambda: _reverse_run(reverse_half), "far from the 8 Gaussians"),
        (lambda: _reverse_run(reverse_forward_sign, n_steps=50), "fly apart|NaN"),
        (lambda: torch.randn(600, 2, generator=torch.Generator().manual_seed(1)), "far from"),
        (lambda: torch.zeros(10, 2), "at least"),
        (lambda: torch.zeros(600, 3), "shape"),
    ],
)
def test_reverse_samples_rejects_wrong_samples(samples, message):
    with pytest.raises(AssertionError, match=message):
        check.reverse_samples(samples())
