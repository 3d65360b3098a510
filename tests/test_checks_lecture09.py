"""The lecture 09 checks accept correct answers and reject stubs and the usual mistakes."""

from __future__ import annotations

import pytest
import torch

from dlai_diffusion import ddim, sde
from dlai_diffusion.checks import lecture09 as check
from dlai_diffusion.schedules import Schedule

# --------------------------------------------------------------------------- answers


def _bar(alpha_bars, k):
    return alpha_bars[k] if k >= 0 else torch.ones((), dtype=alpha_bars.dtype)


def ddim_step(eps_model, alpha_bars, xt, t, s, eta, z):
    ab_t, ab_s = alpha_bars[t], _bar(alpha_bars, s)
    eps = eps_model(xt, torch.full((xt.shape[0],), t, dtype=torch.long))
    x0 = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
    return ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).sqrt() * eps + sigma * z


def ddim_step_with_package(eps_model, alpha_bars, xt, t, s, eta, z):
    """The package's step on a schedule with the same alpha_bars passes too."""
    alphas = alpha_bars / torch.cat([torch.ones(1, dtype=alpha_bars.dtype), alpha_bars[:-1]])
    schedule = Schedule(1 - alphas)
    return ddim.ddim_step(eps_model, schedule, xt, t, s, eta, noise=z)


def hutchinson_divergence(velocity, x, t, probes):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = velocity(x, t)
        total = torch.zeros(x.shape[0], dtype=x.dtype)
        for v in probes:
            (vjp,) = torch.autograd.grad(out, x, grad_outputs=v, retain_graph=True)
            total = total + (vjp * v).sum(1)
    return total / len(probes)


def hutchinson_with_jvp(velocity, x, t, probes):
    """Forward-mode products J v give the same numbers."""
    values = [(torch.func.jvp(lambda y: velocity(y, t), (x,), (v,))[1] * v).sum(1) for v in probes]
    return torch.stack(values).mean(0)


def stub(*args):
    raise NotImplementedError()


# --------------------------------------------------------------------------- mistakes


def ddim_last_entry(eps_model, alpha_bars, xt, t, s, eta, z):
    ab_t, ab_s = alpha_bars[t], alpha_bars[s]
    eps = eps_model(xt, torch.full((xt.shape[0],), t, dtype=torch.long))
    x0 = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
    return ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).clamp(min=0).sqrt() * eps + sigma * z


def ddim_no_eta(eps_model, alpha_bars, xt, t, s, eta, z):
    return ddim_step(eps_model, alpha_bars, xt, t, s, 1.0 if eta > 0 else 0.0, z)


def ddim_full_direction(eps_model, alpha_bars, xt, t, s, eta, z):
    ab_t, ab_s = alpha_bars[t], _bar(alpha_bars, s)
    eps = eps_model(xt, torch.full((xt.shape[0],), t, dtype=torch.long))
    x0 = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
    return ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps + sigma * z


def ddim_no_noise(eps_model, alpha_bars, xt, t, s, eta, z):
    return ddim_step(eps_model, alpha_bars, xt, t, s, eta, 0 * z) + 0 * eta


def hutchinson_summed(velocity, x, t, probes):
    return len(probes) * hutchinson_divergence(velocity, x, t, probes)


def hutchinson_ones(velocity, x, t, probes):
    return hutchinson_divergence(velocity, x, t, torch.ones_like(probes[:1]))


def hutchinson_per_coordinate(velocity, x, t, probes):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (vjp,) = torch.autograd.grad(velocity(x, t), x, grad_outputs=probes[0])
    return vjp * probes[0]


def hutchinson_time_zero(velocity, x, t, probes):
    return hutchinson_divergence(velocity, x, torch.zeros_like(t), probes)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("answer", [ddim_step, ddim_step_with_package])
def test_ddim_check_passes(answer, capsys):
    check.ddim_step(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (ddim_last_entry, "LAST entry"),
        (ddim_no_eta, "eta"),
        (ddim_full_direction, "1 - alpha_bar_s - sigma"),
        (ddim_no_noise, "noise is missing"),
    ],
)
def test_ddim_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.ddim_step(answer)


@pytest.mark.parametrize("answer", [hutchinson_divergence, hutchinson_with_jvp])
def test_hutchinson_check_passes(answer, capsys):
    check.hutchinson_divergence(answer)
    assert "✔" in capsys.readouterr().out


def test_the_package_estimator_agrees_with_the_reference():
    """sde.hutchinson_divergence with the generator's probes, against the check's reference."""
    net = check._net(3, torch.float64, 5)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((7,), 0.3, dtype=torch.float64)
    estimate = sde.hutchinson_divergence(
        net, x, t, n_probes=200, generator=torch.Generator().manual_seed(2)
    )
    probes = sde._draw_probes((200, 7, 3), "rademacher", torch.Generator().manual_seed(2), x)
    reference = check.reference_hutchinson_divergence(net, x, t, probes)
    torch.testing.assert_close(estimate, reference, rtol=1e-10, atol=1e-12)  # the same probes
    exact = check._exact_divergence(net, x, t)
    assert torch.allclose(estimate, exact, atol=0.15 * exact.abs().max().item() + 0.05)


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (hutchinson_summed, "summed"),
        (hutchinson_ones, "1\\^T J 1"),
        (hutchinson_per_coordinate, "shape"),
        (hutchinson_time_zero, "velocity\\(x, t\\)|does not match"),
    ],
)
def test_hutchinson_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.hutchinson_divergence(answer)
