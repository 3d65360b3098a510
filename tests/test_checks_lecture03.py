"""The lecture 03 checks accept correct answers and reject stubs and the usual mistakes."""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion.checks import lecture03 as check
from dlai_diffusion.score_matching import dsm_loss as package_dsm_loss

# --------------------------------------------------------------------------- answers


def dsm_loss(score_net, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    x_tilde = x + sigma * z
    target = (x - x_tilde) / sigma**2
    return 0.5 * (score_net(x_tilde) - target).pow(2).sum(1).mean()


def dsm_loss_with_package(score_net, x, sigma, generator=None):
    """The package's loss draws its noise the same way, so it passes too."""
    return package_dsm_loss(score_net, x, sigma, generator=generator)


def langevin_step(score_fn, x, step_size, z):
    return x + 0.5 * step_size * score_fn(x) + math.sqrt(step_size) * z


def tweedie_denoiser(score_fn, x_tilde, sigma):
    return x_tilde + sigma**2 * score_fn(x_tilde)


def stub(*args):
    raise NotImplementedError()


# --------------------------------------------------------------------------- mistakes


def dsm_no_half(score_net, x, sigma, generator=None):
    return 2 * dsm_loss(score_net, x, sigma, generator)


def dsm_clean_input(score_net, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return 0.5 * (score_net(x) + z / sigma).pow(2).sum(1).mean()


def dsm_sigma_not_squared(score_net, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    x_tilde = x + sigma * z
    return 0.5 * (score_net(x_tilde) - (x - x_tilde) / sigma).pow(2).sum(1).mean()


def dsm_detached(score_net, x, sigma, generator=None):
    return dsm_loss(score_net, x, sigma, generator).detach()


def dsm_two_draws(score_net, x, sigma, generator=None):
    torch.randn(1, generator=generator)
    return dsm_loss(score_net, x, sigma, generator)


def dsm_global_rng(score_net, x, sigma, generator=None):
    return dsm_loss(score_net, x, sigma, None)


def langevin_full_step(score_fn, x, step_size, z):
    return x + step_size * score_fn(x) + math.sqrt(step_size) * z


def langevin_own_noise(score_fn, x, step_size, z):
    return langevin_step(score_fn, x, step_size, torch.randn_like(x))


def langevin_linear_noise(score_fn, x, step_size, z):
    return x + 0.5 * step_size * score_fn(x) + step_size * z


def tweedie_sigma(score_fn, x_tilde, sigma):
    return x_tilde + sigma * score_fn(x_tilde)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("answer", [dsm_loss, dsm_loss_with_package])
def test_dsm_check_passes_on_correct_answers(answer, capsys):
    check.dsm_loss(answer)
    check.dsm_loss_at_optimum(answer, dim=3)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (dsm_no_half, "1/2"),
        (dsm_clean_input, "clean x"),
        (dsm_sigma_not_squared, "sigma\\^2"),
        (dsm_detached, "gradient"),
        (dsm_two_draws, "one call"),
        (dsm_global_rng, "one call"),
    ],
)
def test_dsm_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.dsm_loss(answer)


def test_dsm_optimum_check_rejects_a_wrong_scale():
    with pytest.raises(AssertionError, match="optimum"):
        check.dsm_loss_at_optimum(dsm_no_half)


def test_langevin_check(capsys):
    check.langevin_step(langevin_step)
    assert "✔" in capsys.readouterr().out
    for answer, message in [
        (stub, "not implemented"),
        (langevin_full_step, "step_size / 2"),
        (langevin_own_noise, "not the z passed in"),
        (langevin_linear_noise, "sqrt"),
    ]:
        with pytest.raises(AssertionError, match=message):
            check.langevin_step(answer)


def test_langevin_stationary_law_is_the_ar1_variance():
    mean, stds = torch.zeros(1, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    step = 0.1
    _, variance = check.langevin_stationary_law(mean, stds, step)
    a = step / (2 * 0.25)
    assert variance.item() == pytest.approx(step / (1 - (1 - a) ** 2))


def test_tweedie_check(capsys):
    check.tweedie_denoiser(tweedie_denoiser)
    assert "✔" in capsys.readouterr().out
    for answer, message in [(stub, "not implemented"), (tweedie_sigma, "sigma\\^2, not sigma")]:
        with pytest.raises(AssertionError, match=message):
            check.tweedie_denoiser(answer)
