"""Noise schedules and the Schedule tables, against closed forms computed independently here
(NumPy products, the cosine formula, the telescoping product of Sohl-Dickstein's schedule)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlai_diffusion.schedules import Schedule, cosine_betas, linear_betas, sohl_dickstein_betas

F64 = torch.float64

SCHEDULES = {
    "linear-1000": lambda: Schedule.linear(1000),
    "linear-100": lambda: Schedule.linear(100),
    "cosine-1000": lambda: Schedule.cosine(1000),
    "cosine-20": lambda: Schedule.cosine(20),
    "sohl_dickstein-1000": lambda: Schedule.sohl_dickstein(1000),
    "sohl_dickstein-5": lambda: Schedule.sohl_dickstein(5),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_bar_decreases_strictly_inside_the_unit_interval(name):
    s = SCHEDULES[name]()
    assert s.betas.dtype == F64 and s.alpha_bars.shape == (s.T,)
    assert bool(((s.betas > 0) & (s.betas < 1)).all())
    assert bool(((s.alpha_bars > 0) & (s.alpha_bars < 1)).all())
    assert bool((s.alpha_bars[1:] < s.alpha_bars[:-1]).all())
    assert bool((s.snr[1:] < s.snr[:-1]).all())


@pytest.mark.parametrize("name", SCHEDULES)
def test_tables_match_an_independent_numpy_computation(name):
    s = SCHEDULES[name]()
    b = s.betas.numpy()
    a = 1 - b
    ab = np.cumprod(a)
    ab_prev = np.append(1.0, ab[:-1])
    tilde = b * (1 - ab_prev) / (1 - ab)
    expected = {
        "alphas": a,
        "alpha_bars": ab,
        "alpha_bars_prev": ab_prev,
        "one_minus_alpha_bars": 1 - ab,
        "sqrt_alpha_bars": np.sqrt(ab),
        "sqrt_one_minus_alpha_bars": np.sqrt(1 - ab),
        "posterior_variance": tilde,
        "posterior_mean_coef1": b * np.sqrt(ab_prev) / (1 - ab),
        "posterior_mean_coef2": np.sqrt(a) * (1 - ab_prev) / (1 - ab),
        "snr": ab / (1 - ab),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(getattr(s, key).numpy(), value, rtol=1e-9, err_msg=key)
    if s.T > 1:
        clipped = np.log(np.append(tilde[1], tilde[1:]))
        np.testing.assert_allclose(s.posterior_log_variance_clipped.numpy(), clipped, rtol=1e-12)
    assert s.posterior_variance[0] == 0  # the target of the last step is the data itself


def test_one_minus_alpha_bar_keeps_full_precision_at_the_first_step():
    s = Schedule.linear(1000)
    assert s.one_minus_alpha_bars[0].item() == pytest.approx(1e-4, rel=1e-14)


def test_linear_schedule_is_ddpm_at_1000_steps_and_rescaled_otherwise():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas[1:] - betas[:-1], (betas[1] - betas[0]).expand(999))
    short = linear_betas(100)
    assert short[0].item() == pytest.approx(1e-3) and short[-1].item() == pytest.approx(0.2)
    # the rescaling keeps the total noise: log alpha_bar_{T-1} about -10 in both cases
    for T in (1000, 100):
        assert -11.5 < math.log(Schedule.linear(T).alpha_bars[-1].item()) < -9.5
    explicit = linear_betas(10, beta_start=0.1, beta_end=0.5)
    assert torch.allclose(explicit, torch.linspace(0.1, 0.5, 10, dtype=F64))


def test_cosine_schedule_follows_its_closed_form():
    T, s = 50, 0.008
    alpha_bars = Schedule(cosine_betas(T, s)).alpha_bars

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor([f(t + 1) / f(0) for t in range(T - 1)], dtype=F64)
    assert torch.allclose(alpha_bars[:-1], expected, rtol=1e-10)
    assert cosine_betas(T, s)[-1].item() == 0.999  # the last beta (1 unclipped) is clipped


def test_sohl_dickstein_schedule_removes_a_constant_share_of_the_signal():
    T = 40
    betas = sohl_dickstein_betas(T)
    assert betas[0].item() == pytest.approx(1 / (T + 1)) and betas[-1].item() == 0.5
    alpha_bars = Schedule(betas).alpha_bars
    expected = (T - torch.arange(T, dtype=F64)) / (T + 1)  # papers' (T + 1 - t) / (T + 1)
    assert torch.allclose(alpha_bars, expected, rtol=1e-12)


def test_named_constructors():
    assert Schedule.named("cosine", 30).equals(Schedule.cosine(30))
    assert not Schedule.named("linear", 30).equals(Schedule.cosine(30))
    with pytest.raises(ValueError, match="schedule must be one of"):
        Schedule.named("quadratic", 30)


def test_gather_reads_steps_and_broadcasts_in_the_dtype_of_x():
    s = Schedule.cosine(100)
    x = torch.zeros(3, 1, 4, 4)
    t = torch.tensor([0, 50, 99])
    out = s.gather("alpha_bars", t, x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten().double(), s.alpha_bars[t], rtol=1e-6)
    assert torch.equal(out, s.gather(s.alpha_bars, t, x))
    single = s.gather("betas", 7, torch.zeros(5, 2, dtype=F64))
    assert single.shape == (1, 1) and single.item() == s.betas[7].item()
    assert s.gather("betas", torch.tensor(7), torch.zeros(5, 2)).shape == (5, 1)


def test_to_keeps_the_schedule():
    s = Schedule.linear(50)
    moved = s.to("cpu")
    assert moved.equals(s) and moved.betas.dtype == F64 and len(moved) == 50
    assert "T=50" in repr(s)


def test_float32_betas_are_promoted_to_float64():
    s = Schedule(torch.full((10,), 0.1, dtype=torch.float32))
    assert s.alpha_bars.dtype == F64


@pytest.mark.parametrize(
    "betas, error, message",
    [
        ([[0.1, 0.2]], ValueError, "1-D"),
        ([], ValueError, "1-D"),
        ([0.1, 0.0], ValueError, r"\(0, 1\)"),
        ([0.1, 1.0], ValueError, r"\(0, 1\)"),
        ([0.1, float("nan")], ValueError, r"\(0, 1\)"),
        ("abc", TypeError, "betas"),
        (torch.tensor([True, False]), TypeError, "real"),
    ],
)
def test_bad_betas_are_clear_errors(betas, error, message):
    with pytest.raises(error, match=message):
        Schedule(betas)


def test_bad_arguments_are_clear_errors():
    s = Schedule.linear(100)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="0..99"):
        s.gather("betas", torch.tensor([0, 100]), x)
    with pytest.raises(ValueError, match="0..99"):
        s.gather("betas", -1, x)
    with pytest.raises(TypeError, match="integer"):
        s.gather("betas", torch.tensor([0.5, 1.0]), x)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        s.gather("betas", torch.tensor([1, 2, 3]), x)
    with pytest.raises(ValueError, match="table"):
        s.gather("nothing", 0, x)
    with pytest.raises(ValueError, match="T must be a positive int"):
        linear_betas(0)
    with pytest.raises(TypeError, match="T must be a positive int"):
        cosine_betas(10.0)
    with pytest.raises(ValueError, match="T >= 21"):
        linear_betas(10)  # 0.02 * 1000 / 10 = 2 is no variance
    with pytest.raises(ValueError, match="beta_end"):
        linear_betas(10, beta_end=1.5)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_betas(10, max_beta=1.0)
