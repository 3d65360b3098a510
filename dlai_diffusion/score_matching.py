"""Score matching objectives: Hyvärinen's exact loss, sliced and denoising score matching.

A score model ``score_net`` is any callable that maps a batch ``x`` of shape (N, d) (or
(N, C, H, W) for images) to a tensor of the same shape, its estimate of grad_x log p(x)
(notes Eq. 7). Every loss below returns the batch mean by default (``reduction="mean"``);
``reduction="none"`` gives one value per sample, shape (N,), and ``"sum"`` their sum.

=====================================  =======================================================
function                               what it computes
=====================================  =======================================================
:func:`explicit_score_matching_loss`   0.5 E ||s(x) - grad log p(x)||^2 with a known true score
                                       (the Fisher divergence, notes Eq. 9)
:func:`exact_score_matching_loss`      Hyvärinen's loss 0.5 ||s||^2 + tr(ds/dx) with the exact
                                       Jacobian trace, one backward pass per dimension (Eq. 10-11)
:func:`sliced_score_matching_loss`     the same with the trace replaced by random projections
                                       v^T (ds/dx) v (Song et al., 2019)
:func:`dsm_loss`                       denoising score matching at one noise level (Eq. 12-17)
:func:`jacobian_trace`,                the divergence of a vector field: exact, or Hutchinson's
:func:`hutchinson_trace`               unbiased estimate (reused for likelihoods of flows)
:func:`score_error`                    per-point (relative) error of a score against the truth
=====================================  =======================================================

Batches: the traces differentiate the sum over the batch of one output coordinate, which gives
every sample its own derivative only when the network treats the samples independently (no
batch normalisation in training mode, no attention across the batch).

References: Hyvärinen (2005), "Estimation of non-normalized statistical models by score
matching"; Vincent (2011), "A connection between score matching and denoising autoencoders";
Song, Garg, Shi & Ermon (2019), "Sliced score matching: a scalable approach to density and
score estimation"; Hutchinson (1989), "A stochastic estimator of the trace of the influence
matrix for Laplacian smoothing splines".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._utils import check_batch as _check_batch
from ._utils import draw_normal, draw_uniform, output_like
from ._utils import positive_int as _count

__all__ = [
    "dsm_loss",
    "dsm_target",
    "exact_score_matching_loss",
    "explicit_score_matching_loss",
    "hutchinson_trace",
    "jacobian_trace",
    "relative_score_mse",
    "score_error",
    "sliced_score_matching_loss",
]

ScoreFn = Callable[[Tensor], Tensor]

_DISTRIBUTIONS = ("rademacher", "gaussian")
_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- validation


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _noise_level(sigma: object, x: Tensor) -> float | Tensor:
    """``sigma`` > 0 as a float, or a tensor of shape () or (N,) shaped to broadcast with x."""
    if isinstance(sigma, Tensor):
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
            raise ValueError(
                f"sigma must be a number or a tensor of shape () or (N,) = ({x.shape[0]},), "
                f"got shape {tuple(sigma.shape)}"
            )
        if not bool((torch.isfinite(sigma) & (sigma > 0)).all()):
            raise ValueError("sigma must be finite and > 0")
        return sigma.to(x).reshape(-1, *[1] * (x.ndim - 1)) if sigma.ndim else sigma.to(x)
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        raise TypeError(f"sigma must be a positive number or tensor, got {type(sigma).__name__}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    return float(sigma)


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    _check_choice(reduction, "reduction", _REDUCTIONS)
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample


# --------------------------------------------------------------------------- traces


def _evaluate(fn: ScoreFn, x: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """``x`` made differentiable (without touching the caller's tensor) and ``fn(x)``."""
    _check_batch(x)
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    return x, output_like(fn(x), x, name)


def _squared_norm(v: Tensor) -> Tensor:
    """||v_n||^2 for each sample n, shape (N,)."""
    return v.flatten(1).pow(2).sum(1)


def _exact_trace(out: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """tr(d out / d x) per sample, one backward pass per coordinate of ``out``."""
    rows = out.flatten(1)
    trace = torch.zeros(rows.shape[0], dtype=out.dtype, device=out.device)
    for i in range(rows.shape[1]):
        (grad,) = torch.autograd.grad(
            rows[:, i].sum(), x, retain_graph=True, create_graph=create_graph
        )
        trace = trace + grad.flatten(1)[:, i]
    return trace


def _draw_probes(n: int, x: Tensor, distribution: str, generator) -> Tensor:
    """``n`` probe batches v of the shape of ``x`` with E[v v^T] = I, shape (n, *x.shape)."""
    _check_choice(distribution, "distribution", _DISTRIBUTIONS)
    shape = (n, *x.shape)
    if distribution == "gaussian":
        return draw_normal(shape, generator, device=x.device, dtype=x.dtype)
    heads = draw_uniform(shape, generator, device=x.device, dtype=x.dtype) < 0.5
    return 2.0 * heads.to(x.dtype) - 1.0


def _probe_forms(out: Tensor, x: Tensor, probes: Tensor, create_graph: bool) -> Tensor:
    """v^T (d out / d x) v for each probe and sample, shape (n_probes, N).

    One vector-Jacobian product per probe: autograd gives v^T J, dotted with v.
    """
    forms = []
    for v in probes:
        (v_jac,) = torch.autograd.grad(out, x, v, retain_graph=True, create_graph=create_graph)
        forms.append((v_jac * v).flatten(1).sum(1))
    return torch.stack(forms)


def _with_output(trace: Tensor, out: Tensor, create_graph: bool, return_output: bool):
    if not return_output:
        return trace
    return trace, out if create_graph else out.detach()


@torch.enable_grad()
def jacobian_trace(
    fn: ScoreFn, x: Tensor, create_graph: bool = False, return_output: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact divergence tr(d fn / d x) of a vector field at each sample, shape (N,).

    ``fn`` maps (N, ...) to the same shape; the trace runs over all non-batch coordinates.
    It costs one backward pass per coordinate (D = d, or C * H * W), which is the reason
    for the sliced and denoising objectives. ``create_graph=True`` keeps the result
    differentiable (for training). Works under ``torch.no_grad()`` too.
    ``return_output=True`` returns ``(trace, fn(x))`` from the same forward pass (the output
    is detached unless ``create_graph=True``), e.g. the drift and its divergence of an ODE.
    """
    x, out = _evaluate(fn, x, "fn")
    return _with_output(_exact_trace(out, x, create_graph), out, create_graph, return_output)


@torch.enable_grad()
def hutchinson_trace(
    fn: ScoreFn,
    x: Tensor,
    n_probes: int = 1,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    return_output: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Hutchinson's unbiased estimate of tr(d fn / d x) at each sample, shape (N,).

    tr(J) = E_v[v^T J v] for any random v with E[v v^T] = I (Hutchinson, 1989; the
    Skilling-Hutchinson estimator of FFJORD, Grathwohl et al., 2019). Each of the
    ``n_probes`` independent probes costs one vector-Jacobian product, whatever the
    dimension; the result is their mean. ``distribution``: ``"rademacher"`` (entries +-1,
    the smaller variance: 2 * sum_{i != j} of the squared symmetrised Jacobian entries) or
    ``"gaussian"`` (N(0, I); variance 2 ||(J + J^T) / 2||_F^2). Probes are drawn from
    ``generator``. ``create_graph`` and ``return_output`` as in :func:`jacobian_trace`.
    """
    n_probes = _count(n_probes, "n_probes")
    x, out = _evaluate(fn, x, "fn")
    probes = _draw_probes(n_probes, x, distribution, generator)
    trace = _probe_forms(out, x, probes, create_graph).mean(0)
    return _with_output(trace, out, create_graph, return_output)


# --------------------------------------------------------------------------- losses


def explicit_score_matching_loss(
    score_net: ScoreFn, x: Tensor, true_score_fn: ScoreFn, reduction: str = "mean"
) -> Tensor:
    """0.5 ||s(x) - grad log p(x)||^2 averaged over x ~ p: the Fisher divergence (notes Eq. 9).

    Needs the true score, so it only exists for toy problems (e.g.
    ``toy.GaussianMixture.score``); it is the reference the tractable losses are compared with.
    """
    _check_batch(x)
    model = output_like(score_net(x), x, "score_net")
    truth = output_like(true_score_fn(x), x, "true_score_fn")
    return _reduce(0.5 * _squared_norm(model - truth), reduction)


@torch.enable_grad()
def exact_score_matching_loss(score_net: ScoreFn, x: Tensor, reduction: str = "mean") -> Tensor:
    """Hyvärinen's score matching loss 0.5 ||s(x)||^2 + tr(d s / d x) (notes Eq. 10-11).

    Equals the Fisher divergence of Eq. 9 minus 0.5 E||grad log p||^2, a constant of the
    data (Hyvärinen, 2005), so it can be minimised from samples alone. The Jacobian trace
    (the sum of second derivatives of log p_theta in Eq. 10) is exact, one backward pass per
    dimension with ``create_graph=True``, so the loss can be back-propagated to the
    parameters of ``score_net``.
    """
    x, score = _evaluate(score_net, x, "score_net")
    per_sample = 0.5 * _squared_norm(score) + _exact_trace(score, x, create_graph=True)
    return _reduce(per_sample, reduction)


@torch.enable_grad()
def sliced_score_matching_loss(
    score_net: ScoreFn,
    x: Tensor,
    n_projections: int = 1,
    variance_reduction: bool = True,
    distribution: str = "gaussian",
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon, 2019): Eq. 10 along random directions.

    With projections v, E[v v^T] = I, drawn from ``generator`` (``distribution``
    ``"gaussian"`` as in the paper, or ``"rademacher"``):

    - SSM (``variance_reduction=False``): mean over v of v^T J v + 0.5 (v^T s)^2;
    - SSM-VR (default): mean over v of v^T J v, plus 0.5 ||s||^2, the exact expectation of
      0.5 (v^T s)^2.

    Both are unbiased estimates of :func:`exact_score_matching_loss`, at the cost of one
    vector-Jacobian product per projection instead of one backward pass per dimension.
    Differentiable; images (N, C, H, W) are projected as flat vectors.
    """
    n_projections = _count(n_projections, "n_projections")
    x, score = _evaluate(score_net, x, "score_net")
    probes = _draw_probes(n_projections, x, distribution, generator)
    per_sample = _probe_forms(score, x, probes, create_graph=True).mean(0)
    if variance_reduction:
        per_sample = per_sample + 0.5 * _squared_norm(score)
    else:
        projected = (probes * score).flatten(2).sum(2)  # v^T s, shape (n_projections, N)
        per_sample = per_sample + 0.5 * projected.pow(2).mean(0)
    return _reduce(per_sample, reduction)


def dsm_target(x: Tensor, x_tilde: Tensor, sigma: float | Tensor) -> Tensor:
    """grad log q_sigma(x_tilde | x) = (x - x_tilde) / sigma^2 (notes Eq. 17).

    The score of the Gaussian corruption kernel: it points from the noisy point back to the
    clean one. With x_tilde = x + sigma z it equals -z / sigma.
    """
    return (x - x_tilde) / sigma**2


def dsm_loss(
    score_net: ScoreFn,
    x: Tensor,
    sigma: float | Tensor,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    noise: Tensor | None = None,
) -> Tensor:
    """Denoising score matching at noise level ``sigma`` (Vincent, 2011; notes Eq. 12-17).

    x_tilde = x + sigma z with z ~ N(0, I) (Eq. 12) and the loss
    0.5 ||s(x_tilde) - (x - x_tilde) / sigma^2||^2 (Eq. 16-17), summed over coordinates.
    It differs from the Fisher divergence to the perturbed density q_sigma by a constant,
    so its minimiser is the score of q_sigma (Eq. 13-14).

    Args:
        score_net: maps x_tilde, shape of ``x``, to a score of the same shape.
        x: clean data, (N, d) or (N, C, H, W).
        sigma: noise level > 0, a number or a tensor of shape () or (N,) (one per sample).
        generator: drives the draw of z.
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` (shape (N,)).
        noise: optional z of the shape of ``x`` to use instead of a fresh draw.
    """
    _check_batch(x)
    sigma = _noise_level(sigma, x)
    if noise is None:
        noise = draw_normal(x.shape, generator, device=x.device, dtype=x.dtype)
    elif not isinstance(noise, Tensor) or noise.shape != x.shape:
        raise ValueError(f"noise must be a tensor of the shape of x {tuple(x.shape)}")
    x_tilde = x + sigma * noise
    score = output_like(score_net(x_tilde), x, "score_net")
    return _reduce(0.5 * _squared_norm(score - dsm_target(x, x_tilde, sigma)), reduction)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def score_error(
    score_fn: ScoreFn, true_score_fn: ScoreFn, x: Tensor, relative: bool = True
) -> Tensor:
    """Pointwise error of a score estimate against the true score, shape (N,).

    ``relative=True`` (default): ||s(x) - s*(x)|| / ||s*(x)||, the error as a fraction of
    the true score's length, comparable between regions where scores are short and long;
    ``relative=False``: ||s(x) - s*(x)||, whose mean square over x ~ p is twice the Fisher
    divergence of notes Eq. 9. Norms run over all non-batch coordinates. Where the true
    score vanishes (a mode, a saddle between modes) the relative error is inf, or 0 if the
    estimate vanishes too. Evaluated without gradient tracking: a score computed by autograd
    must switch it on itself (as ``langevin.energy_to_score`` does).
    """
    _check_batch(x)
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be a bool, got {type(relative).__name__}")
    estimate = output_like(score_fn(x), x, "score_fn")
    truth = output_like(true_score_fn(x), x, "true_score_fn")
    error = _squared_norm(estimate - truth).sqrt()
    if not relative:
        return error
    return torch.where(error == 0, error, error / _squared_norm(truth).sqrt())


@torch.no_grad()
def relative_score_mse(score_fn: ScoreFn, true_score_fn: ScoreFn, x: Tensor) -> float:
    """E ||s(x) - s*(x)||^2 / E ||s*(x)||^2 over the points ``x`` (a sample of the law under
    which the score is judged): twice the Fisher divergence of notes Eq. 9 in units of the
    true score's mean square, so 0 for the exact score and 1 for the zero score. Unlike the
    mean of :func:`score_error`, it stays finite where the true score vanishes."""
    _check_batch(x)
    truth = output_like(true_score_fn(x), x, "true_score_fn")
    squared = _squared_norm(output_like(score_fn(x), x, "score_fn") - truth).mean()
    return (squared / _squared_norm(truth).mean()).item()
