"""The lecture 11 checks accept correct answers and reject stubs and the usual mistakes."""

from __future__ import annotations

import pytest
import torch

from dlai_diffusion import flow_matching as fm
from dlai_diffusion.checks import lecture11 as check

# --------------------------------------------------------------------------- answers


def linear_path(x0, x1, t):
    tt = t[:, None]
    return (1 - tt) * x0 + tt * x1, x1 - x0


def linear_path_with_package(x0, x1, t):
    return fm.linear_path(x0, x1, t)


def flow_matching_loss(model, x0, x1, t):
    xt, ut = linear_path(x0, x1, t)
    return (model(xt, t) - ut).pow(2).mean()


def flow_matching_loss_with_package(model, x0, x1, t):
    return fm.flow_matching_loss(model, x1, x0=x0, t=t)


def euler_sampler(model, x, n_steps):
    h = 1.0 / n_steps
    for k in range(n_steps):
        x = x + h * model(x, torch.full((x.shape[0],), k * h, dtype=x.dtype))
    return x


def euler_sampler_with_package(model, x, n_steps):
    return fm.sample_flow(model, x, n_steps, "euler")


def stub(*args):
    raise NotImplementedError()


# --------------------------------------------------------------------------- mistakes


def path_swapped(x0, x1, t):
    return linear_path(x1, x0, t)


def path_sqrt(x0, x1, t):
    tt = t[:, None]
    return (1 - tt).sqrt() * x0 + tt.sqrt() * x1, x1 - x0


def path_wrong_sign(x0, x1, t):
    return linear_path(x0, x1, t)[0], x0 - x1


def loss_summed(model, x0, x1, t):
    return x0.shape[1] * flow_matching_loss(model, x0, x1, t)


def loss_data_target(model, x0, x1, t):
    xt, _ = linear_path(x0, x1, t)
    return (model(xt, t) - x1).pow(2).mean()


def loss_on_noise(model, x0, x1, t):
    return (model(x0, t) - (x1 - x0)).pow(2).mean()


def loss_detached(model, x0, x1, t):
    return flow_matching_loss(model, x0, x1, t).detach()


def euler_unit_step(model, x, n_steps):
    for k in range(n_steps):
        x = x + model(x, torch.full((x.shape[0],), k / n_steps, dtype=x.dtype))
    return x


def euler_one_short(model, x, n_steps):
    h = 1.0 / n_steps
    for k in range(n_steps - 1):
        x = x + h * model(x, torch.full((x.shape[0],), k * h, dtype=x.dtype))
    return x


def euler_late_times(model, x, n_steps):
    h = 1.0 / n_steps
    for k in range(n_steps):
        x = x + h * model(x, torch.full((x.shape[0],), (k + 1) * h, dtype=x.dtype))
    return x


def euler_scalar_time(model, x, n_steps):
    h = 1.0 / n_steps
    for k in range(n_steps):
        x = x + h * model(x, k * h)
    return x


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("answer", [linear_path, linear_path_with_package])
def test_linear_path_check_passes(answer, capsys):
    check.linear_path(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (path_swapped, "swapped"),
        (path_sqrt, "square roots"),
        (path_wrong_sign, "wrong sign"),
    ],
)
def test_linear_path_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.linear_path(answer)


@pytest.mark.parametrize("answer", [flow_matching_loss, flow_matching_loss_with_package])
def test_loss_check_passes(answer, capsys):
    check.flow_matching_loss(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (loss_summed, "average"),
        (loss_data_target, "not the data"),
        (loss_on_noise, "path point"),
        (loss_detached, "gradient"),
    ],
)
def test_loss_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.flow_matching_loss(answer)


@pytest.mark.parametrize("answer", [euler_sampler, euler_sampler_with_package])
def test_euler_check_passes(answer, capsys):
    check.euler_sampler(answer)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, message",
    [
        (stub, "not implemented"),
        (euler_unit_step, "h = 1 / n_steps"),
        (euler_one_short, "one step too few"),
        (euler_late_times, "t = 0, 0.2"),
        (euler_scalar_time, "shape \\(N,\\)"),
    ],
)
def test_euler_check_rejects_mistakes(answer, message):
    with pytest.raises(AssertionError, match=message):
        check.euler_sampler(answer)
