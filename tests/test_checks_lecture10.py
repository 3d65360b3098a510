"""The lecture 10 checks accept correct answers and reject stubs and the usual mistakes."""

from __future__ import annotations

import pytest
import torch

from dlai_diffusion import guidance
from dlai_diffusion.checks import lecture10 as check

# --------------------------------------------------------------------------- answers


def cfg(eps_model, x, t, y, scale, null_label):
    null = torch.full_like(y, null_label)
    uncond = eps_model(x, t, null)
    return uncond + scale * (eps_model(x, t, y) - uncond)


def cfg_with_package(eps_model, x, t, y, scale, null_label):
    return guidance.classifier_free_eps(eps_model, y, scale, null_label)(x, t)


def guided(eps_model, log_prob, alpha_bars, x, t, y, scale):
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(x_in, t, y).sum(), x_in)
    return eps_model(x, t) - scale * (1 - alpha_bars[t]).sqrt().reshape(-1, 1) * grad


def dropout(y, p_uncond, null_label, generator):
    keep = torch.rand(y.shape, generator=generator) >= p_uncond
    return torch.where(keep, y, torch.full_like(y, null_label))


def dropout_with_package(y, p_uncond, null_label, generator):
    return guidance.drop_labels(y, p_uncond, null_label, generator)


def stub(*args):
    raise NotImplementedError()


# --------------------------------------------------------------------------- mistakes


def cfg_swapped(eps_model, x, t, y, scale, null_label):
    cond, uncond = eps_model(x, t, y), eps_model(x, t, torch.full_like(y, null_label))
    return cond + scale * (uncond - cond)


def cfg_ho_salimans(eps_model, x, t, y, scale, null_label):
    uncond = eps_model(x, t, torch.full_like(y, null_label))
    return (1 + scale) * eps_model(x, t, y) - scale * uncond


def cfg_no_null(eps_model, x, t, y, scale, null_label):
    return eps_model(x, t, y)


def _grad(log_prob, x, t, y):
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        return torch.autograd.grad(log_prob(x_in, t, y).sum(), x_in)[0]


def guided_plus(eps_model, log_prob, alpha_bars, x, t, y, scale):
    factor = (1 - alpha_bars[t]).sqrt().reshape(-1, 1)
    return eps_model(x, t) + scale * factor * _grad(log_prob, x, t, y)


def guided_no_sqrt(eps_model, log_prob, alpha_bars, x, t, y, scale):
    factor = (1 - alpha_bars[t]).reshape(-1, 1)
    return eps_model(x, t) - scale * factor * _grad(log_prob, x, t, y)


def guided_no_grad_mode(eps_model, log_prob, alpha_bars, x, t, y, scale):
    x_in = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x_in, t, y).sum(), x_in)
    return eps_model(x, t) - scale * (1 - alpha_bars[t]).sqrt().reshape(-1, 1) * grad


def dropout_inverted(y, p_uncond, null_label, generator):
    return dropout(y, 1 - p_uncond, null_label, generator)


def dropout_global_rng(y, p_uncond, null_label, generator):
    return dropout(y, p_uncond, null_label, None)


def dropout_float(y, p_uncond, null_label, generator):
    return dropout(y, p_uncond, null_label, generator).double()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("answer", [cfg, cfg_with_package])
def test_classifier_free_check_passes(answer, capsys):
    check.classifier_free_eps(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (cfg_swapped, "swapped"),
        (cfg_ho_salimans, "Ho & Salimans"),
        (cfg_no_null, "null label"),
    ],
)
def test_classifier_free_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.classifier_free_eps(answer)


def test_classifier_guided_check(capsys):
    check.classifier_guided_eps(guided)
    assert "✔" in capsys.readouterr().out
    for answer, message in [
        (stub, "not implemented"),
        (guided_plus, "sign"),
        (guided_no_sqrt, "not 1 - alpha_bar_t"),
    ]:
        with pytest.raises(AssertionError, match=message):
            check.classifier_guided_eps(answer)
    with pytest.raises(RuntimeError):  # the check runs it under no_grad, as samplers do
        check.classifier_guided_eps(guided_no_grad_mode)


@pytest.mark.parametrize("answer", [dropout, dropout_with_package])
def test_drop_labels_check_passes(answer, capsys):
    check.drop_labels(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (dropout_inverted, "1 - p_uncond"),
        (dropout_global_rng, "generator"),
        (dropout_float, "integers"),
    ],
)
def test_drop_labels_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.drop_labels(answer)


def test_check_mixture_log_prob_is_bayes_rule_on_the_noised_mixture():
    """log p(k | x_t) written out: x_t | k ~ N(a m_k, (a^2 s_k^2 + 1 - alpha_bar_t) I) with
    a = sqrt(alpha_bar_t), weighted by w_k and normalised over k."""
    from dlai_diffusion.schedules import Schedule

    mixture, schedule = check.check_mixture(), Schedule.linear(30)
    log_prob = check.mixture_log_prob_fn(mixture, schedule)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = 10
    alpha_bar = schedule.alpha_bars[t].double()
    means = alpha_bar.sqrt() * mixture.means.double()
    variances = alpha_bar * mixture.stds.double() ** 2 + 1 - alpha_bar
    squared = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    log_joint = mixture.weights.double().log() - squared / (2 * variances) - variances.log()
    expected = torch.log_softmax(log_joint, dim=1)  # in 2D, log N = -|x-m|^2/2v - log v + c
    for k in range(3):
        got = log_prob(x, torch.full((5,), t), torch.full((5,), k))
        torch.testing.assert_close(got, expected[:, k])
