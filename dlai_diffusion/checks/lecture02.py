"""Checks for the exercises of lecture 02: the score-matching loss, Hutchinson's trace estimator
and sliced score matching.

Each check calls the student's function on fixed inputs and compares the result with an
independent reference: closed forms for linear score fields s(x) = A x (whose Jacobian is A),
the implementations of :mod:`dlai_diffusion.score_matching`, and, for the random estimators,
their exact mean and variance. Statistical tolerances are several standard errors wide, so a
correct answer passes whatever random numbers it draws. A check prints a short confirmation or
raises ``AssertionError`` saying what is wrong. Answers are written in torch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import score_matching as _sm
from ..nets import ScoreMLP
from ..toy import GaussianMixture
from . import call_student

__all__ = ["exact_score_matching_loss", "hutchinson_trace", "sliced_score_matching_loss"]

_F64 = torch.float64


# --------------------------------------------------------------------------- helpers


def _call(fn, *args, **kwargs):
    """:func:`call_student`, plus a clear message for a graph differentiated twice."""
    try:
        return call_student(fn, *args, **kwargs)
    except RuntimeError as error:
        if "second time" not in str(error):
            raise
        raise AssertionError(
            f"{getattr(fn, '__name__', 'the function')} differentiates the same graph twice: "
            "pass create_graph=True (the loss is trained, so keep it differentiable) or "
            "retain_graph=True to torch.autograd.grad"
        ) from error


def _tensor(value, what: str) -> Tensor:
    assert isinstance(value, Tensor), f"{what} should be a torch tensor, got {type(value).__name__}"
    assert torch.isfinite(value).all(), f"{what} is not finite: {value}"
    return value


def _scalar(value, what: str) -> Tensor:
    value = _tensor(value, what)
    assert value.numel() == 1, (
        f"{what} should be one number (the mean over the batch), got shape {tuple(value.shape)}"
    )
    return value.reshape(())


def _number(value, what: str) -> float:
    return float(_scalar(value, what).detach())


def _per_sample(value, n: int, what: str) -> Tensor:
    value = _tensor(value, what)
    assert value.shape == (n,), (
        f"{what} should hold one value per sample, shape ({n},), got {tuple(value.shape)}"
    )
    return value


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(shape, seed: int) -> Tensor:
    return torch.randn(shape, generator=_generator(seed), dtype=_F64)


def _linear(a: Tensor):
    """The score field s(x) = A x, row by row: its Jacobian is A at every point."""

    def score(x: Tensor) -> Tensor:
        return x @ a.T

    return score


def _mlp(dim: int, seed: int) -> ScoreMLP:
    """A small smooth float64 score network, initialised without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ScoreMLP(dim, hidden=32, depth=2, cond=False, activation="tanh").to(_F64)


def _mixture() -> GaussianMixture:
    return GaussianMixture(
        [[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], [0.6, 0.8, 0.5], [0.3, 0.4, 0.3], dtype=_F64
    )


def _gradient(loss: Tensor, model: torch.nn.Module) -> Tensor:
    """Gradient of ``loss`` with respect to the model's parameters, as one flat vector."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for p, g in zip(params, grads, strict=True)
        ]
    )


def _jacobians(fn, x: Tensor) -> Tensor:
    """Per-sample Jacobians d fn_i / d x_j, shape (N, d, d), one backward pass per row i."""
    x = x.detach().requires_grad_(True)
    out = fn(x)
    rows = [
        torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)[0] for i in range(x.shape[1])
    ]
    return torch.stack(rows, dim=1)


def _symmetric_square_sum(a: Tensor) -> float:
    """sum_{i<j} (A_ij + A_ji)^2: the variance of v^T A v for Rademacher v."""
    s = a + a.T
    return float((s.triu(1) ** 2).sum())


def _gaussian_variance(a: Tensor) -> float:
    """2 ||(A + A^T) / 2||_F^2: the variance of v^T A v for v ~ N(0, I)."""
    return float(0.5 * ((a + a.T) ** 2).sum())


# --------------------------------------------------------------------------- exercise (a)


def _diagnose_exact(got: float, half_norm: float, trace: float, entries: float, n: int) -> str:
    """A hint naming the likely slip, from the two terms of Eq. 11 (batch means), the sum of
    all Jacobian entries and the batch size."""
    candidates = {
        "the batch is summed: return the mean over the batch": n * (half_norm + trace),
        "all entries of the Jacobian are summed: keep its diagonal d s_i / d x_i": (
            half_norm + entries
        ),
        "the trace term is missing": half_norm,
        "the trace enters with the wrong sign": half_norm - trace,
        "the factor 1/2 in front of ||s||^2 is missing": 2 * half_norm + trace,
        "only the trace is there; add 0.5 ||s(x)||^2": trace,
    }
    for hint, value in candidates.items():
        if abs(got - value) < 1e-6 * (1 + abs(value)):
            return f" It looks like {hint}."
    return " Expected mean over the batch of 0.5 ||s(x)||^2 + tr(ds/dx) (notes Eq. 11)."


def exact_score_matching_loss(fn) -> None:
    """Exercise (a): ``fn(score_fn, x)`` is Hyvärinen's loss (notes Eq. 11) as a batch mean.

    References: the closed form 0.5 ||A x||^2 + tr(A) for a linear score s(x) = A x, and
    :func:`dlai_diffusion.score_matching.exact_score_matching_loss` for score networks in
    2 and 5 dimensions and for an exact mixture score, values and gradients with respect to
    the network's parameters (the loss is trained, so it must stay differentiable).
    """
    # 1. A linear score field: the Jacobian is A everywhere, so the trace is tr(A).
    a = _normal((3, 3), 0)
    x = _normal((64, 3), 1)
    half_norm = float(0.5 * (x @ a.T).pow(2).sum(1).mean())
    trace = float(torch.trace(a))
    got = _number(_call(fn, _linear(a), x), "the loss")
    expected = half_norm + trace
    assert abs(got - expected) < 1e-8 * (1 + abs(expected)), (
        f"linear score s(x) = A x in 3D: the loss should be {expected:.6f} "
        f"(0.5 ||A x||^2 averaged over the batch, plus tr A = {trace:.4f}), got {got:.6f}."
        + _diagnose_exact(got, half_norm, trace, float(a.sum()), x.shape[0])
    )
    # 2. Score networks: value and parameter gradient against the package.
    for dim, seed in ((2, 2), (5, 3)):
        net = _mlp(dim, seed)
        x = 1.5 * _normal((48, dim), seed + 10)
        expected = _sm.exact_score_matching_loss(net, x)
        got = _scalar(_call(fn, net, x), "the loss")
        assert torch.allclose(got.detach(), expected.detach(), rtol=1e-8, atol=1e-10), (
            f"score network in {dim}D: the loss should be {float(expected):.6f}, got "
            f"{float(got):.6f}. Sum the diagonal of the Jacobian, d s_i / d x_i for i = 1..d, "
            "one torch.autograd.grad call per coordinate i."
        )
        assert got.requires_grad, (
            "the loss is not differentiable with respect to the network's parameters: pass "
            "create_graph=True to torch.autograd.grad so the trace can be back-propagated"
        )
        grad_got, grad_expected = _gradient(got, net), _gradient(expected, net)
        assert torch.allclose(grad_got, grad_expected, rtol=1e-6, atol=1e-9), (
            f"score network in {dim}D: the value is right but its gradient with respect to the "
            "parameters is not. Keep the trace differentiable (create_graph=True) and do not "
            "detach any term."
        )
    # 3. The exact score of a Gaussian mixture, a field whose Jacobian changes with x.
    mixture = _mixture()
    x = mixture.sample(200, _generator(4))
    expected = float(_sm.exact_score_matching_loss(mixture.score, x).detach())
    got = _number(_call(fn, mixture.score, x), "the loss")
    assert abs(got - expected) < 1e-8 * (1 + abs(expected)), (
        f"exact score of a Gaussian mixture: the loss should be {expected:.6f}, got {got:.6f}"
    )
    print(
        "✔ exact score-matching loss matches the closed form (linear scores) and the "
        "reference (networks in 2D and 5D, a mixture), values and parameter gradients"
    )


# --------------------------------------------------------------------------- exercise (b)


def hutchinson_trace(fn) -> None:
    """Exercise (b): ``fn(vector_fn, x, n_probes=1, generator=None)`` estimates tr(d f/d x).

    References: for a diagonal linear map every Rademacher probe gives the trace exactly; for a
    general linear map A the estimates of distinct samples are independent with mean tr(A)
    and variance sum_{i<j} (A_ij + A_ji)^2 / n_probes; for a network, the average over many
    probes approaches :func:`dlai_diffusion.score_matching.jacobian_trace`. The probes must
    come from ``generator``.
    """
    n = 4000
    # 1. Diagonal map: v^T D v = sum_i D_ii v_i^2 = tr D for every Rademacher probe.
    diagonal = torch.diag(torch.tensor([1.5, -0.5, 2.0, 0.25], dtype=_F64))
    x = _normal((32, 4), 5)
    got = _per_sample(
        _call(fn, _linear(diagonal), x, n_probes=1, generator=_generator(0)), 32, "the estimate"
    )
    assert torch.allclose(got.detach(), torch.full_like(got, 3.25), rtol=1e-10, atol=1e-10), (
        "for a diagonal map D, v^T D v = sum_i D_ii v_i^2 should equal tr D = 3.25 for every "
        f"probe with entries +-1, got values from {float(got.min()):.4f} to "
        f"{float(got.max()):.4f}. Draw Rademacher probes: 2 * torch.randint(0, 2, ...) - 1."
    )
    # 2. General linear map: unbiased, with the right variance, one probe per sample.
    a = _normal((5, 5), 6)
    exact, variance = float(torch.trace(a)), _symmetric_square_sum(a)
    x = _normal((n, 5), 7)
    for n_probes in (1, 4):
        got = _call(fn, _linear(a), x, n_probes=n_probes, generator=_generator(n_probes))
        got = _per_sample(got, n, "the estimate").detach()
        spread = float(got.var())
        assert spread > 1e-12, (
            "every sample got the same estimate: draw an independent probe for each sample "
            "(probes of the shape of x)"
        )
        se = math.sqrt(variance / n_probes / n)
        assert abs(float(got.mean()) - exact) < 6 * se, (
            f"linear map A with tr A = {exact:.4f}: the estimates average to "
            f"{float(got.mean()):.4f} over {n} samples ({n_probes} probe(s) each), more than "
            f"6 standard errors ({se:.4f}) away. Use probes with E[v v^T] = I and compute "
            "v^T (d f / d x) v with one vector-Jacobian product."
        )
        target = variance / n_probes
        assert 0.75 * target < spread < 1.25 * target, (
            f"linear map A, {n_probes} probe(s): the estimates should have variance "
            f"{target:.3f} (Rademacher probes, averaged over the probes), got {spread:.3f}. "
            "Average over n_probes independent probes (not the sum), entries +-1."
        )
    # 3. A score network: many probes approach the exact trace at every sample.
    net = _mlp(3, 8)
    x = _normal((16, 3), 9)
    exact = _sm.jacobian_trace(net, x)
    n_probes = 200
    got = _call(fn, net, x, n_probes=n_probes, generator=_generator(10))
    got = _per_sample(got, 16, "the estimate").detach()
    se = torch.tensor([math.sqrt(_symmetric_square_sum(j) / n_probes) for j in _jacobians(net, x)])
    worst = float(((got - exact).abs() / se).max())
    assert worst < 6, (
        f"score network in 3D: with {n_probes} probes the estimate should be within a few "
        f"standard errors of the exact trace at every sample; the largest deviation is "
        f"{worst:.1f} standard errors. Exact: {exact[:3].numpy().round(4)}, yours: "
        f"{got[:3].numpy().round(4)}."
    )
    # 4. Reproducible from the generator, random across seeds.
    x = _normal((16, 5), 11)
    first, again, other = (
        _tensor(_call(fn, _linear(a), x, n_probes=1, generator=_generator(seed)), "estimate")
        for seed in (12, 12, 13)
    )
    assert torch.equal(first, again), (
        "two calls with generators seeded alike gave different estimates: draw the probes "
        "with generator=generator"
    )
    assert not torch.equal(first, other), (
        "generators seeded differently gave the same estimates: the probes must be random, "
        "drawn with generator=generator"
    )
    print(
        "✔ Hutchinson's estimator is exact for diagonal maps, unbiased with the right "
        "variance for linear maps, close to the exact trace of a network, reproducible"
    )


# --------------------------------------------------------------------------- exercise (c)


def sliced_score_matching_loss(fn) -> None:
    """Exercise (c): ``fn(score_fn, x, n_projections=1, generator=None)`` is sliced score
    matching with variance reduction (Song, Garg, Shi & Ermon, 2019) as a batch mean.

    References: for a constant score the Jacobian vanishes and the variance-reduced loss is
    0.5 ||c||^2 exactly, whatever the projections; for s(x) = A x the loss is an unbiased
    estimate of the closed-form Hyvärinen loss and its variance falls like 1 / n_projections;
    for a network its parameter gradient, averaged over projections, approaches the one of
    :func:`dlai_diffusion.score_matching.exact_score_matching_loss`.
    """
    # 1. Constant score: J = 0, so only 0.5 ||s||^2 is left -- exactly, with variance reduction.
    c = torch.tensor([1.0, -2.0, 0.5], dtype=_F64)

    def constant(x: Tensor) -> Tensor:
        return c + 0 * x

    x = _normal((64, 3), 20)
    got = _number(_call(fn, constant, x, n_projections=1, generator=_generator(0)), "the loss")
    assert abs(got - 2.625) < 1e-10, (
        f"for a constant score c = (1, -2, 0.5) the Jacobian is 0 and the variance-reduced loss "
        f"is 0.5 ||c||^2 = 2.625 for any projection, got {got:.6f}. Use variance reduction: "
        "replace 0.5 (v^T s)^2 by its expectation 0.5 ||s||^2."
    )
    # 2. Linear score: unbiased for the closed form, variance ~ 1 / n_projections.
    a = _normal((4, 4), 21)
    x = _normal((4000, 4), 22)
    exact = float(0.5 * (x @ a.T).pow(2).sum(1).mean() + torch.trace(a))
    got = _call(fn, _linear(a), x, n_projections=1, generator=_generator(1))
    got = _number(got, "the loss")
    se = math.sqrt(_gaussian_variance(a) / x.shape[0])
    assert abs(got - exact) < 6 * se, (
        f"linear score s(x) = A x: the loss should estimate 0.5 E||A x||^2 + tr A = {exact:.4f} "
        f"(standard error {se:.4f} over this batch), got {got:.4f}. The projected Jacobian "
        "term is v^T (ds/dx) v = (v^T J) . v, one vector-Jacobian product per projection."
    )
    point = _normal((1, 4), 23).expand(50, 4)  # the same point 50 times: only the probes vary
    spreads = {}
    for k in (1, 8):
        values = torch.stack(
            [
                _scalar(
                    _call(
                        fn, _linear(a), point, n_projections=k, generator=_generator(100 * k + r)
                    ),
                    "the loss",
                )
                for r in range(200)
            ]
        ).detach()
        spreads[k] = float(values.var())
    assert spreads[1] > 1e-12, "the loss does not vary with the projections: draw them at random"
    ratio = spreads[1] / spreads[8]
    assert 4 < ratio < 16, (
        f"with 8 projections the loss should vary about 8 times less than with 1, got a ratio "
        f"of {ratio:.1f}: average over n_projections independent projections per sample"
    )
    # 3. A score network: the gradient, averaged over projections, is the exact one.
    net = _mlp(3, 24)
    x = 1.5 * _normal((256, 3), 25)
    got = _scalar(_call(fn, net, x, n_projections=64, generator=_generator(2)), "the loss")
    assert got.requires_grad, (
        "the loss is not differentiable with respect to the network's parameters: pass "
        "create_graph=True to torch.autograd.grad"
    )
    grad_got = _gradient(got, net)
    grad_exact = _gradient(_sm.exact_score_matching_loss(net, x), net)
    cosine = float(torch.nn.functional.cosine_similarity(grad_got, grad_exact, dim=0))
    assert cosine > 0.99, (
        f"score network in 3D, 64 projections: the parameter gradient should point like the "
        f"exact loss's (cosine similarity > 0.99), got {cosine:.3f}. Keep the projected "
        "Jacobian term differentiable (create_graph=True) and do not detach s(x)."
    )
    # 4. Reproducible from the generator.
    x = _normal((16, 4), 26)
    first, again = (
        _tensor(_call(fn, _linear(a), x, n_projections=1, generator=_generator(3)), "the loss")
        for _ in range(2)
    )
    assert torch.equal(first, again), (
        "two calls with generators seeded alike gave different losses: draw the projections "
        "with generator=generator"
    )
    print(
        "✔ sliced score matching: exact for constant scores (variance reduction), unbiased for "
        "linear scores with variance ~ 1/n_projections, gradient aligned with the exact loss"
    )
