"""The checks of lecture 02 pass on correct answers, fail on typical mistakes, and
``score_matching.score_error`` against closed forms.

Correct answers are the package's implementations (with either probe distribution, so the
checks do not depend on how the probes are drawn); wrong answers are small edits of them.
"""

from __future__ import annotations

import pytest
import torch

from dlai_diffusion import score_matching as sm
from dlai_diffusion import toy
from dlai_diffusion.checks import lecture02 as check


def _exact(score_fn, x):
    return sm.exact_score_matching_loss(score_fn, x)


def _hutchinson(fn, x, n_probes=1, generator=None):
    return sm.hutchinson_trace(fn, x, n_probes, generator=generator)


def _sliced(distribution):
    def loss(score_fn, x, n_projections=1, generator=None):
        return sm.sliced_score_matching_loss(
            score_fn, x, n_projections, distribution=distribution, generator=generator
        )

    return loss


def _stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize(
    "name, answer",
    [
        ("exact_score_matching_loss", _exact),
        ("hutchinson_trace", _hutchinson),
        ("sliced_score_matching_loss", _sliced("gaussian")),
        ("sliced_score_matching_loss", _sliced("rademacher")),
    ],
)
def test_checks_pass_on_correct_answers(name, answer, capsys):
    getattr(check, name)(answer)
    assert capsys.readouterr().out.startswith("✔")


@pytest.mark.parametrize(
    "name", ["exact_score_matching_loss", "hutchinson_trace", "sliced_score_matching_loss"]
)
def test_checks_fail_on_the_stub_with_a_clear_message(name):
    with pytest.raises(AssertionError, match="not implemented yet"):
        getattr(check, name)(_stub)


def _exact_without_half(score_fn, x):
    return sm.exact_score_matching_loss(score_fn, x) + 0.5 * sm._squared_norm(score_fn(x)).mean()


def _exact_detached_trace(score_fn, x):
    half = 0.5 * sm._squared_norm(score_fn(x)).mean()
    return half + sm.jacobian_trace(score_fn, x).mean()  # no create_graph: no parameter gradient


def _hutchinson_gaussian(fn, x, n_probes=1, generator=None):
    return sm.hutchinson_trace(fn, x, n_probes, distribution="gaussian", generator=generator)


def _hutchinson_summed(fn, x, n_probes=1, generator=None):
    return n_probes * sm.hutchinson_trace(fn, x, n_probes, generator=generator)


def _sliced_without_variance_reduction(score_fn, x, n_projections=1, generator=None):
    return sm.sliced_score_matching_loss(
        score_fn, x, n_projections, variance_reduction=False, generator=generator
    )


def _sliced_one_projection(score_fn, x, n_projections=1, generator=None):
    return sm.sliced_score_matching_loss(score_fn, x, 1, generator=generator)


def _sliced_global_rng(score_fn, x, n_projections=1, generator=None):
    return sm.sliced_score_matching_loss(score_fn, x, n_projections)


@pytest.mark.parametrize(
    "name, answer, message",
    [
        ("exact_score_matching_loss", _exact_without_half, "factor 1/2"),
        ("exact_score_matching_loss", _exact_detached_trace, "differentiable|gradient"),
        ("hutchinson_trace", _hutchinson_gaussian, "Rademacher"),
        ("hutchinson_trace", _hutchinson_summed, "standard errors"),
        ("sliced_score_matching_loss", _sliced_without_variance_reduction, "variance reduction"),
        ("sliced_score_matching_loss", _sliced_one_projection, "8 times less"),
        ("sliced_score_matching_loss", _sliced_global_rng, "generator"),
    ],
)
def test_checks_name_the_mistake(name, answer, message):
    with pytest.raises(AssertionError, match=message):
        getattr(check, name)(answer)


# --------------------------------------------------------------------------- score_error


def _mixture():
    return toy.GaussianMixture([[-1.0, 0.0], [1.5, 1.0]], [0.5, 0.8], dtype=torch.float64)


def test_score_error_of_a_scaled_score_is_the_scale_offset():
    mixture = _mixture()
    x = mixture.sample(100, torch.Generator().manual_seed(0)) + 0.01  # off the means

    def scaled(points):
        return 1.3 * mixture.score(points)

    relative = sm.score_error(scaled, mixture.score, x)
    assert relative.shape == (100,)
    assert torch.allclose(relative, torch.full_like(relative, 0.3), rtol=1e-12)
    absolute = sm.score_error(scaled, mixture.score, x, relative=False)
    assert torch.allclose(absolute, 0.3 * mixture.score(x).norm(dim=1), rtol=1e-12)
    assert torch.equal(sm.score_error(mixture.score, mixture.score, x), torch.zeros(100).double())


def test_score_error_squared_is_twice_the_explicit_loss():
    mixture = _mixture()
    x = mixture.sample(50, torch.Generator().manual_seed(1))

    def shifted(points):
        return mixture.score(points) + torch.tensor([0.2, -0.1], dtype=points.dtype)

    error = sm.score_error(shifted, mixture.score, x, relative=False)
    explicit = sm.explicit_score_matching_loss(shifted, x, mixture.score, reduction="none")
    assert torch.allclose(error**2, 2 * explicit, rtol=1e-12)


def test_score_error_at_a_zero_of_the_true_score():
    x = torch.zeros(2, 2)

    def zero(points):
        return torch.zeros_like(points)

    def one(points):
        return torch.ones_like(points)

    assert torch.equal(sm.score_error(zero, zero, x), torch.zeros(2))
    assert torch.isinf(sm.score_error(one, zero, x)).all()


def test_score_error_flattens_images_and_checks_its_inputs():
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    error = sm.score_error(lambda p: 2 * p, lambda p: p, x)
    assert torch.allclose(error, torch.ones(3))
    with pytest.raises(ValueError, match="score_fn"):
        sm.score_error(lambda p: p[:, :1], lambda p: p, torch.ones(4, 2))
    with pytest.raises(TypeError, match="relative"):
        sm.score_error(lambda p: p, lambda p: p, torch.ones(4, 2), relative=1)
    with pytest.raises(ValueError, match="x"):
        sm.score_error(lambda p: p, lambda p: p, torch.ones(4))
