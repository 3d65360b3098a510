"""Checks for the exercises of lecture 11: flow matching and rectified flow.

Each check calls the student's function, compares the result with an independent reference
and prints a short confirmation, or raises ``AssertionError`` saying what is wrong. The
references: the straight path and its velocity written out coordinate by coordinate (and the
velocity checked as a finite-difference time derivative of the path); the loss recomputed from
the same noise and times; the Euler sampler checked on a linear velocity field whose Euler
iterates are known in closed form, (1 + h a)^n x.

Convention (as in :mod:`dlai_diffusion.flow_matching`): x_0 ~ N(0, I) is the noise, x_1 the
data, x_t = (1 - t) x_0 + t x_1 and u_t = x_1 - x_0.

References: Lipman et al. (2023), "Flow matching for generative modeling"; Liu, Gong & Liu
(2023), "Flow straight and fast".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import assert_trainable as _trainable
from . import call_student as _call
from . import checked_tensor as _checked
from . import close as _close
from . import fixed_mlp as _fixed_mlp
from . import name_mistake as _hint
from . import seeded_normal as _draw

__all__ = [
    "euler_sampler",
    "flow_matching_loss",
    "linear_path",
    "reference_euler_sampler",
    "reference_flow_matching_loss",
    "reference_linear_path",
]

_F64 = torch.float64


def _times(n: int, seed: int, dtype: torch.dtype = _F64) -> Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _velocity_net(dim: int, dtype: torch.dtype, seed: int):
    """A small fixed time-conditioned network v(x, t) for times in [0, 1]."""
    return _fixed_mlp(dim, dtype, seed, time_scale=1000.0)


# --------------------------------------------------------------------------- exercise (a)


def reference_linear_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """x_t = (1 - t) x_0 + t x_1 and u_t = x_1 - x_0, with t (N,) broadcast per sample."""
    tt = t.reshape(-1, *[1] * (x0.ndim - 1))
    return x0 + tt * (x1 - x0), x1 - x0


def linear_path(fn: Callable) -> None:
    """Exercise (a): ``fn(x0, x1, t) -> (x_t, u_t)`` for x0, x1 (N, d) and t (N,)."""
    for dim, seed in ((2, 1), (5, 2)):
        x0, x1, t = _draw((24, dim), seed), _draw((24, dim), 10 + seed), _times(24, 20 + seed)
        out = _call(fn, x0, x1, t)
        assert isinstance(out, tuple | list) and len(out) == 2, (
            "linear_path should return a pair (x_t, u_t)"
        )
        xt = _checked(out[0], "x_t", (24, dim))
        ut = _checked(out[1], "u_t", (24, dim))
        expected_xt, expected_ut = reference_linear_path(x0, x1, t)
        if not _close(xt, expected_xt):
            tt = t[:, None]
            hint = _hint(
                xt,
                {
                    "x_0 and x_1 are swapped: at t = 0 the path starts at the noise x_0": (
                        x1 + tt * (x0 - x1)
                    ),
                    "the path is not a straight line (no square roots here: that is diffusion)": (
                        (1 - tt).sqrt() * x0 + tt.sqrt() * x1
                    ),
                },
                "x_t should be (1 - t) x_0 + t x_1, with one t per sample (t[:, None])",
            )
            raise AssertionError(f"d = {dim}: linear_path's x_t is wrong: {hint}")
        if not _close(ut, expected_ut):
            hint = _hint(
                ut,
                {"u_t has the wrong sign: the path moves from x_0 to x_1": x0 - x1},
                "u_t should be the time derivative of x_t, x_1 - x_0",
            )
            raise AssertionError(f"d = {dim}: linear_path's u_t is wrong: {hint}")
    # u_t is the time derivative of the path (a finite difference in float64).
    x0, x1, t = _draw((8, 3), 3), _draw((8, 3), 4), 0.2 + 0.6 * _times(8, 5)
    h = 1e-6
    ahead, behind = _call(fn, x0, x1, t + h)[0], _call(fn, x0, x1, t - h)[0]
    assert _close((ahead - behind) / (2 * h), _call(fn, x0, x1, t)[1], rtol=1e-5, atol=1e-7), (
        "u_t should equal d x_t / dt"
    )
    print("✔ linear_path: x_t = (1 - t) x_0 + t x_1 and u_t = x_1 - x_0 = d x_t / dt")


# --------------------------------------------------------------------------- exercise (b)


def reference_flow_matching_loss(model, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Mean over batch and coordinates of (v(x_t, t) - (x_1 - x_0))^2."""
    xt, ut = reference_linear_path(x0, x1, t)
    return (model(xt, t) - ut).pow(2).mean()


def flow_matching_loss(fn: Callable) -> None:
    """Exercise (b): ``fn(velocity_model, x0, x1, t)`` is the conditional flow-matching loss."""
    for dim, dtype, seed in ((2, _F64, 1), (3, _F64, 2), (2, torch.float32, 3)):
        where = f"d = {dim}, {dtype}"
        net = _velocity_net(dim, dtype, seed)
        x0, x1 = _draw((32, dim), seed, dtype), _draw((32, dim), 30 + seed, dtype)
        t = _times(32, 60 + seed, dtype)
        loss = _call(fn, net, x0, x1, t)
        assert isinstance(loss, Tensor) and loss.numel() == 1, (
            f"{where}: flow_matching_loss should return a scalar tensor, got "
            + (f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__)
        )
        with torch.no_grad():
            expected = reference_flow_matching_loss(net, x0, x1, t)
            got = loss.detach().reshape(())
            if not _close(got, expected, rtol=1e-5, atol=1e-7):
                xt, ut = reference_linear_path(x0, x1, t)
                mistakes = {
                    "the squared error is summed over the coordinates; average it (mean over "
                    "batch and coordinates)": expected * dim,
                    "the target is the velocity x_1 - x_0, not the data x_1": (
                        (net(xt, t) - x1).pow(2).mean()
                    ),
                    "the target has the wrong sign: u_t = x_1 - x_0": (
                        (net(xt, t) + ut).pow(2).mean()
                    ),
                    "the model must be evaluated on the path point x_t, not on the noise": (
                        (net(x0, t) - ut).pow(2).mean()
                    ),
                    "the model must be evaluated at t, not at 1 - t": (
                        (net(xt, 1 - t) - ut).pow(2).mean()
                    ),
                }
                hint = _hint(got, mistakes, "it does not match E |v(x_t, t) - (x_1 - x_0)|^2")
                raise AssertionError(
                    f"{where}: flow_matching_loss = {got.item():.6g}, expected "
                    f"{expected.item():.6g}: {hint}"
                )
        _trainable(loss, net, where, "the model")
    print("✔ flow_matching_loss matches mean |v(x_t, t) - (x_1 - x_0)|^2 with the same draws")


# --------------------------------------------------------------------------- exercise (c)


@torch.no_grad()
def reference_euler_sampler(model, x_init: Tensor, n_steps: int) -> Tensor:
    """x <- x + h v(x, t_k), t_k = k h, h = 1 / n_steps, k = 0..n_steps-1."""
    x, h = x_init, 1.0 / n_steps
    for k in range(n_steps):
        x = x + h * model(x, torch.full((x.shape[0],), k * h, dtype=x.dtype))
    return x


def euler_sampler(fn: Callable) -> None:
    """Exercise (c): ``fn(velocity_model, x_init, n_steps)`` integrates dx/dt = v(x, t) from
    t = 0 to 1 with ``n_steps`` Euler steps."""
    # A linear field v = a x: Euler gives (1 + a h)^n x exactly.
    a = -0.7
    x = _draw((10, 2), 1)
    for n_steps in (1, 4, 25):
        got = _checked(
            _call(fn, lambda z, t: a * z, x, n_steps), f"euler_sampler (n_steps={n_steps})", (10, 2)
        )
        expected = (1 + a / n_steps) ** n_steps * x
        if not _close(got, expected):
            hint = _hint(
                got,
                {
                    "the step size must be h = 1 / n_steps": (1 + a) ** n_steps * x,
                    "one step too few or too many": (1 + a / n_steps) ** (n_steps - 1) * x,
                    "the exact solution exp(a) x came out: this is not n Euler steps": (
                        torch.exp(torch.tensor(a)) * x
                    ),
                },
                "x should be updated as x + h v(x, t), n_steps times",
            )
            raise AssertionError(f"n_steps = {n_steps}: euler_sampler is wrong: {hint}")
    # Times: the model must see t_k = k / n_steps, one per sample (N,).
    seen = []

    def recorder(z, t):
        assert isinstance(t, Tensor) and t.shape == (z.shape[0],), (
            "call the model with t as a tensor of shape (N,) (one time per sample)"
        )
        seen.append(float(t[0]))
        return torch.zeros_like(z)

    _call(fn, recorder, x, 5)
    assert len(seen) == 5, f"5 steps should call the model 5 times, it was called {len(seen)} times"
    assert _close(torch.tensor(seen), torch.arange(5) / 5, atol=1e-6), (
        f"the model should be called at t = 0, 0.2, ..., 0.8 for 5 steps, got {seen}"
    )
    # A time-dependent network, against the reference.
    net = _velocity_net(2, _F64, 7)
    with torch.no_grad():
        got = _call(fn, net, x, 8)
        assert _close(got, reference_euler_sampler(net, x, 8)), (
            "with a network v(x, t) the result differs from 8 Euler steps at t = k / 8"
        )
    print("✔ euler_sampler: x + v(x, k/n) / n, n times, from t = 0 to t = 1")
