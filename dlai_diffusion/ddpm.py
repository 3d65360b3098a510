"""Denoising diffusion probabilistic models (DDPM): the forward process, its posterior, the
simple loss, the variational bound term by term, and ancestral sampling.

The forward process is fixed by a :class:`~dlai_diffusion.schedules.Schedule`; a model is a
callable ``model(x_t, t)`` that returns its estimate of the noise eps in x_t = sqrt(alpha_bar_t)
x_0 + sqrt(1 - alpha_bar_t) eps (notes Eq. 36-37), a tensor of the shape of ``x_t``; ``t`` is a
long tensor (N,) of 0-indexed steps, ``t`` in 0..T-1, the papers' step t + 1 (see
:mod:`dlai_diffusion.schedules`). Formulas keep the papers' names: x_0 (``x0``) is the data
and x_t (``xt``) the latent at step ``t``, which the papers call x_{t+1}; "x_{t-1}" of the
step ``t = 0`` is the data itself.

=========================================  =================================================
what                                       where
=========================================  =================================================
q(x_t | x_{t-1}), q(x_t | x_0)             :func:`q_step` (notes Eq. 28), :func:`q_sample`,
                                           :func:`q_mean_variance` (Ho et al., Eq. 4)
q(x_{t-1} | x_t, x_0)                      :func:`q_posterior` (Ho et al., Eq. 6-7)
eps <-> x_0 <-> score                      :func:`predict_x0_from_eps`,
                                           :func:`predict_eps_from_x0`, :func:`eps_to_score`,
                                           :func:`score_to_eps`
the loss of Ho et al. (notes Eq. 37)       :func:`simple_loss`
p(x_{t-1} | x_t) (notes Eq. 35-36)         :func:`p_mean_variance`
the bound L_T + sum L_t + L_0              :func:`prior_kl`, :func:`kl_terms`,
                                           :func:`decoder_nll`, :func:`vb_terms`,
                                           :func:`variational_bound`, :func:`bound_weights`
Gaussian KL and likelihoods                :func:`normal_kl`, :func:`gaussian_log_likelihood`,
                                           :func:`discretized_gaussian_log_likelihood`
ancestral sampling (notes Eq. 38)          :func:`p_sample`, :func:`sample_ddpm`
networks sized for a schedule              :func:`ddpm_mlp`, :func:`ddpm_unet`
=========================================  =================================================

The reverse variance sigma_t^2 is fixed (``variance="beta"``: sigma_t^2 = beta_t, or
``"posterior"``: sigma_t^2 = beta tilde_t, the two choices of Ho et al., Sec. 3.2), or
``"learned"``: then ``model(x_t, t)`` returns a whole :class:`ReverseGaussian` (mean and
variance), as the diffusion probabilistic model of :mod:`dlai_diffusion.dpm` does; every
function below accepts both kinds.

References: Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models";
Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), "Deep unsupervised learning using
nonequilibrium thermodynamics"; Nichol & Dhariwal (2021), "Improved denoising diffusion
probabilistic models".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._utils import check_batch as _check_batch
from ._utils import draw_normal
from .schedules import Schedule

__all__ = [
    "Gaussian",
    "ReverseGaussian",
    "VariationalBound",
    "bound_weights",
    "ddpm_mlp",
    "ddpm_unet",
    "decoder_nll",
    "discretized_gaussian_log_likelihood",
    "eps_to_score",
    "gaussian_log_likelihood",
    "kl_terms",
    "normal_kl",
    "p_mean_variance",
    "p_sample",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "prior_kl",
    "q_mean_variance",
    "q_posterior",
    "q_sample",
    "q_step",
    "sample_ddpm",
    "score_to_eps",
    "simple_loss",
    "vb_terms",
    "variational_bound",
]

Model = Callable[[Tensor, Tensor], Tensor]

_VARIANCES = ("beta", "posterior", "learned")
_DECODERS = ("discretized", "gaussian")
_LOG_2PI = math.log(2 * math.pi)


class Gaussian(NamedTuple):
    """A diagonal Gaussian: mean (the shape of the data), variance and log-variance (that
    shape, or (N, 1, ..., 1) when they are the same for every coordinate: they broadcast)."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor


class ReverseGaussian(NamedTuple):
    """A reverse kernel p(x_{t-1} | x_t) = N(mean, diag(variance)) (notes Eq. 32, 35) and the
    model's estimate ``x0`` of the clean data (``None`` when the model gives none)."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    x0: Tensor | None = None


# --------------------------------------------------------------------------- validation


def _check_schedule(schedule: object) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be a dlai_diffusion.schedules.Schedule, got {type(schedule).__name__}"
        )
    return schedule


def _check_like(value: object, x: Tensor, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != x.shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor of the shape of x {tuple(x.shape)}, got {got}")
    return value


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _noise(x: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is None:
        return draw_normal(x.shape, generator, device=x.device, dtype=x.dtype)
    return _check_like(noise, x, "noise")


def _draw_steps(n: int, T: int, generator: torch.Generator | None, device) -> Tensor:
    """``n`` steps uniform on 0..T-1, drawn on the generator's device."""
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(T, (n,), generator=generator, device=source).to(device)


def _sum_per_sample(values: Tensor) -> Tensor:
    return values.flatten(1).sum(1)


# --------------------------------------------------------------------------- forward process


def q_step(
    schedule: Schedule,
    x_prev: Tensor,
    t: Tensor | int,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One forward step x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z (notes Eq. 28).

    ``x_prev`` is x_{t-1}, the data when ``t = 0`` (in the papers' 1-indexed steps this is
    the step from x_t to x_{t+1}); ``t`` (N,) or an int; ``noise`` z, or a fresh draw from
    ``generator``.
    """
    _check_schedule(schedule)
    _check_batch(x_prev, "x_prev")
    z = _noise(x_prev, noise, generator)
    alpha = schedule.gather("alphas", t, x_prev)
    beta = schedule.gather("betas", t, x_prev)
    return alpha.sqrt() * x_prev + beta.sqrt() * z


def q_mean_variance(schedule: Schedule, x0: Tensor, t: Tensor | int) -> Gaussian:
    """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (Ho et al., 2020, Eq. 4);
    the variances broadcast against ``x0`` as in :func:`q_posterior`."""
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    mean = schedule.gather("sqrt_alpha_bars", t, x0) * x0
    variance = schedule.gather("one_minus_alpha_bars", t, x0)
    return Gaussian(mean, variance, variance.log())


def q_sample(
    schedule: Schedule,
    x0: Tensor,
    t: Tensor | int,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw x_t ~ q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, the diffusion
    kernel that jumps straight from the data to step t (Ho et al., 2020, Eq. 4; notes Eq. 37).

    ``t`` (N,) or an int; ``noise`` eps of the shape of ``x0``, or a fresh draw from
    ``generator``. The T forward steps of :func:`q_step` give the same law.
    """
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    eps = _noise(x0, noise, generator)
    signal = schedule.gather("sqrt_alpha_bars", t, x0)
    return signal * x0 + schedule.gather("sqrt_one_minus_alpha_bars", t, x0) * eps


def q_posterior(schedule: Schedule, x0: Tensor, xt: Tensor, t: Tensor | int) -> Gaussian:
    """The forward posterior q(x_{t-1} | x_t, x_0) = N(mu tilde, beta tilde_t I) (Ho et al.,
    2020, Eq. 6-7): what the reverse kernel should match (notes Eq. 34).

    mu tilde = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x_0
               + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
    beta tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).

    At ``t = 0`` the target is the data itself: mean x_0, variance 0; its ``log_variance`` is
    then clipped to log beta tilde_1 (as in Ho et al.'s code) so that it stays finite.
    Shapes: the mean has the shape of ``x0``; variance and log-variance are (N, 1, ..., 1)
    (or (1, ..., 1) for an int ``t``) and broadcast against it.
    """
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    _check_like(xt, x0, "xt")
    coef1 = schedule.gather("posterior_mean_coef1", t, x0)
    coef2 = schedule.gather("posterior_mean_coef2", t, x0)
    variance = schedule.gather("posterior_variance", t, x0)
    log_variance = schedule.gather("posterior_log_variance_clipped", t, x0)
    return Gaussian(coef1 * x0 + coef2 * xt, variance, log_variance)


# --------------------------------------------------------------------------- parameterisations


def predict_x0_from_eps(schedule: Schedule, xt: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t): Eq. 4 of Ho et al. solved
    for the data."""
    _check_batch(xt, "xt")
    _check_like(eps, xt, "eps")
    noise_scale = schedule.gather("sqrt_one_minus_alpha_bars", t, xt)
    return (xt - noise_scale * eps) / schedule.gather("sqrt_alpha_bars", t, xt)


def predict_eps_from_x0(schedule: Schedule, xt: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t), the inverse of
    :func:`predict_x0_from_eps`."""
    _check_batch(xt, "xt")
    _check_like(x0, xt, "x0")
    signal = schedule.gather("sqrt_alpha_bars", t, xt)
    return (xt - signal * x0) / schedule.gather("sqrt_one_minus_alpha_bars", t, xt)


def eps_to_score(schedule: Schedule, eps: Tensor, t: Tensor | int) -> Tensor:
    """score = -eps / sqrt(1 - alpha_bar_t): the noise predictor as a score of q(x_t).

    The best noise estimate is E[eps | x_t] = -sqrt(1 - alpha_bar_t) grad log q(x_t)
    (Tweedie's formula; Vincent, 2011; Ho et al., 2020, Sec. 3.2), so DDPM is denoising score
    matching at the noise levels sqrt(1 - alpha_bar_t) (notes Sec. 7).
    """
    _check_batch(eps, "eps")
    return -eps / schedule.gather("sqrt_one_minus_alpha_bars", t, eps)


def score_to_eps(schedule: Schedule, score: Tensor, t: Tensor | int) -> Tensor:
    """eps = -sqrt(1 - alpha_bar_t) score, the inverse of :func:`eps_to_score`."""
    _check_batch(score, "score")
    return -schedule.gather("sqrt_one_minus_alpha_bars", t, score) * score


# --------------------------------------------------------------------------- the simple loss


def simple_loss(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    generator: torch.Generator | None = None,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """L_simple of Ho et al. (2020), Eq. 14 (notes Eq. 37): || eps - eps_theta(x_t, t) ||^2.

    t is uniform on 0..T-1 (the papers' 1..T) and eps ~ N(0, I), both drawn from ``generator``
    unless given; x_t = :func:`q_sample`. The squared error is averaged over the coordinates
    (as in Ho et al.'s code; the notes' squared norm is D times larger), so the loss of a
    model that predicts 0 is about 1 whatever the data size. ``reduction``: ``"mean"`` over the
    batch (default) or ``"none"`` (shape (N,)).
    """
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    _check_choice(reduction, "reduction", ("mean", "none"))
    if t is None:
        t = _draw_steps(x0.shape[0], schedule.T, generator, x0.device)
    t = schedule.check_steps(t, x0.shape[0]).to(x0.device)
    eps = _noise(x0, noise, generator)
    prediction = _check_like(model(q_sample(schedule, x0, t, eps), t), x0, "model(x_t, t)")
    per_sample = (prediction - eps).pow(2).flatten(1).mean(1)
    return per_sample.mean() if reduction == "mean" else per_sample


# --------------------------------------------------------------------------- reverse process


def _check_learned_model(model: object, schedule: Schedule) -> None:
    own = getattr(model, "schedule", None)
    if isinstance(own, Schedule) and not own.equals(schedule):
        raise ValueError(
            f"schedule ({schedule}) differs from the schedule the model was built with ({own})"
        )


def p_mean_variance(
    model: Model,
    schedule: Schedule,
    xt: Tensor,
    t: Tensor | int,
    variance: str = "beta",
    clip_x0: bool = False,
) -> ReverseGaussian:
    """The reverse kernel p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) (notes Eq. 35).

    With a noise model the mean is notes Eq. 36 (Ho et al., Eq. 11):
    mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t),
    which equals the posterior mean mu tilde(x_t, x0_hat) at the predicted clean data
    x0_hat = :func:`predict_x0_from_eps`. ``clip_x0=True`` clips x0_hat to [-1, 1] (the data
    range of images) before forming that mean, as Ho et al.'s sampler does.

    ``variance``: ``"beta"`` (sigma_t^2 = beta_t), ``"posterior"`` (beta tilde_t; at t = 0,
    where it is 0, beta tilde_1 as in Ho et al.'s code) or ``"learned"``: ``model(x_t, t)``
    returns the whole :class:`ReverseGaussian` (e.g. :class:`dlai_diffusion.dpm.DPMReverse`).
    ``t``: steps (N,) or one int for the batch; the model always receives a long tensor (N,).
    Fixed variances come back with shape (N, 1, ..., 1) (or (1, ..., 1) for an int ``t``),
    which broadcasts against ``xt``; learned ones have its shape.
    """
    _check_schedule(schedule)
    _check_batch(xt, "xt")
    _check_choice(variance, "variance", _VARIANCES)
    steps = schedule.check_steps(t, xt.shape[0]).to(xt.device)
    t = t if isinstance(t, int) else steps
    if variance == "learned":
        if clip_x0:
            raise ValueError(
                "clip_x0 needs a noise model; it is not defined for variance='learned'"
            )
        _check_learned_model(model, schedule)
        kernel = model(xt, steps)
        if not isinstance(kernel, ReverseGaussian):
            raise TypeError(
                "with variance='learned', model(x_t, t) must return a ReverseGaussian, got "
                f"{type(kernel).__name__}"
            )
        _check_like(kernel.mean, xt, "the learned mean")
        return kernel
    eps = _check_like(model(xt, steps), xt, "model(x_t, t)")
    x0 = predict_x0_from_eps(schedule, xt, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        mean = q_posterior(schedule, x0, xt, t).mean
    else:
        beta = schedule.gather("betas", t, xt)
        noise_scale = schedule.gather("sqrt_one_minus_alpha_bars", t, xt)
        mean = (xt - beta / noise_scale * eps) / schedule.gather("alphas", t, xt).sqrt()
    if variance == "beta":
        log_variance = schedule.gather("betas", t, xt).log()
    else:
        log_variance = schedule.gather("posterior_log_variance_clipped", t, xt)
    return ReverseGaussian(mean, log_variance.exp(), log_variance, x0)


def bound_weights(schedule: Schedule, variance: str = "beta") -> Tensor:
    """lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)), shape (T,): with a noise
    model, the KL term of step t is C_t + lambda_t ||eps - eps_theta(x_t, t)||^2 (Ho et al.,
    2020, Eq. 12), and the simple loss (notes Eq. 37) sets every lambda_t to 1. ``variance``
    ``"beta"`` or ``"posterior"``, sigma_t^2 as in :func:`p_mean_variance`; the entry t = 0
    belongs to the decoder term and is given for completeness."""
    _check_schedule(schedule)
    _check_choice(variance, "variance", ("beta", "posterior"))
    if variance == "beta":
        sigma2 = schedule.betas
    else:
        sigma2 = schedule.posterior_log_variance_clipped.exp()
    return schedule.betas**2 / (2 * sigma2 * schedule.alphas * (1 - schedule.alpha_bars))


def _ancestral_step(kernel: ReverseGaussian, t: Tensor | int, generator) -> Tensor:
    """mean + sigma z, with no noise where t = 0 (notes Eq. 38; Ho et al., Algorithm 2)."""
    mean = kernel.mean
    if isinstance(t, int) and t == 0:
        return mean
    z = draw_normal(mean.shape, generator, device=mean.device, dtype=mean.dtype)
    sigma = (0.5 * kernel.log_variance).exp()
    if not isinstance(t, int):
        sigma = sigma * (t > 0).to(mean.dtype).reshape(-1, *[1] * (mean.ndim - 1))
    return mean + sigma * z


def p_sample(
    model: Model,
    schedule: Schedule,
    xt: Tensor,
    t: Tensor | int,
    variance: str = "beta",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One reverse step x_{t-1} = mu_theta(x_t, t) + sigma_t z (notes Eq. 38); no noise is added
    at t = 0, whose mean is the sample. ``t``: steps (N,) or one int; other arguments as in
    :func:`p_mean_variance`."""
    kernel = p_mean_variance(model, schedule, xt, t, variance, clip_x0)
    return _ancestral_step(kernel, t if isinstance(t, int) else t.to(xt.device), generator)


@torch.no_grad()
def sample_ddpm(
    model: Model,
    x_init: Tensor,
    schedule: Schedule,
    variance: str = "beta",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Ancestral sampling (notes Eq. 38; Ho et al., 2020, Algorithm 2) from x_{T-1} = ``x_init``.

    ``x_init`` should be drawn from the prior N(0, I) (notes Eq. 31). For t = T-1, ..., 0:
    x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at the last step, which returns the
    mean of the last reverse kernel as the sample (the papers' noiseless step from x_1 to x_0).
    ``variance`` and ``clip_x0`` as in :func:`p_mean_variance`; every draw comes from
    ``generator``. ``callback({"i": i, "t": t, "x": x, "x0": x0_hat})`` is called after each of
    the T steps (i = 0..T-1, t = T-1-i, x = the new sample; x0_hat is None for learned
    kernels). Runs without gradients.
    """
    _check_schedule(schedule)
    _check_batch(x_init, "x_init")
    x = x_init
    for i, t in enumerate(range(schedule.T - 1, -1, -1)):
        kernel = p_mean_variance(model, schedule, x, t, variance, clip_x0)
        x = _ancestral_step(kernel, t, generator)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": kernel.x0})
    return x


# --------------------------------------------------------------------------- the bound


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per coordinate, in nats (broadcasts):

    0.5 (logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1).
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).pow(2) * torch.exp(-logvar2)
        - 1.0
    )


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_variance: Tensor) -> Tensor:
    """log N(x; mean, e^log_variance) per coordinate, in nats (a density: continuous data)."""
    return -0.5 * (_LOG_2PI + log_variance + (x - mean).pow(2) * torch.exp(-log_variance))


def _log_normal_mass(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, accurate in both tails and for narrow intervals."""
    flip = (a + b) > 0  # reflect onto the left half-line, where log Phi keeps its precision
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    d = (log_a - log_b).clamp(max=-1e-30)  # log(Phi(a) / Phi(b)) < 0
    log1m_exp = torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-d.exp()))
    return log_b + log1m_exp


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_variance: Tensor, bins: int = 256
) -> Tensor:
    """log P(x) per coordinate for data on a grid of ``bins`` values in [-1, 1] (Ho et al., 2020,
    Sec. 3.3, Eq. 13): the mass N(mean, e^log_variance) puts on the bin of x.

    The bin of x = k / 127.5 - 1 (8-bit pixels with the default 256 bins) is
    [x - 1/255, x + 1/255]; the outermost bins reach to -inf and +inf, so the masses of all
    bins sum to 1. Normal tail masses use ``log_ndtr``, accurate far from the mean. ``x`` must
    lie in [-1, 1].
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    if x.numel() and (float(x.min()) < -1 - 1e-5 or float(x.max()) > 1 + 1e-5):
        raise ValueError("x must lie in [-1, 1] (data scaled from 0..bins-1)")
    half = 1.0 / (bins - 1)
    scale = torch.exp(-0.5 * log_variance)
    far = torch.finfo(x.dtype).max ** 0.25  # an "infinite" standardized edge with finite grads
    lower = torch.where(x < -1 + half, -far, (x - half - mean) * scale)
    upper = torch.where(x > 1 - half, far, (x + half - mean) * scale)
    return _log_normal_mass(lower, upper)


def prior_kl(schedule: Schedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_{T-1} | x_0) || N(0, I)) per sample, in nats (papers' KL(q(x_T | x_0) ||
    p(x_T)), notes Eq. 31; Ho et al., Eq. 5). Constant in the model; small when alpha_bar_{T-1}
    is."""
    q = q_mean_variance(schedule, x0, schedule.T - 1)
    zero = torch.zeros_like(x0)
    return _sum_per_sample(normal_kl(q.mean, q.log_variance, zero, zero))


def _kl_and_nll(model, schedule, x0, t, variance, decoder, noise, generator):
    """Both candidate terms at the same x_t ~ q(x_t | x_0): the KL to the posterior and the
    decoder's negative log-likelihood of x_0, each summed per sample, shape (N,)."""
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    _check_choice(decoder, "decoder", _DECODERS)
    t = schedule.check_steps(t, x0.shape[0]).to(x0.device)
    xt = q_sample(schedule, x0, t, noise, generator)
    target = q_posterior(schedule, x0, xt, t)
    kernel = p_mean_variance(model, schedule, xt, t, variance)
    kl = normal_kl(target.mean, target.log_variance, kernel.mean, kernel.log_variance)
    log_likelihood = (
        discretized_gaussian_log_likelihood if decoder == "discretized" else gaussian_log_likelihood
    )
    nll = -log_likelihood(x0, kernel.mean, kernel.log_variance)
    return _sum_per_sample(kl), _sum_per_sample(nll), t


def kl_terms(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    t: Tensor | int,
    variance: str = "beta",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The terms KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) of the bound, one per sample at
    its step t >= 1, in nats, shape (N,), for x_t ~ q(x_t | x_0) (notes Eq. 34; Ho et al.,
    Eq. 5). This is the papers' L_t (their KL for x_t given x_{t+1}); ``t`` = 0 is the decoder,
    see :func:`decoder_nll`. A Gaussian KL in closed form (:func:`normal_kl`) summed over the
    coordinates.
    """
    t = schedule.check_steps(t, x0.shape[0] if isinstance(x0, Tensor) else None)
    if t.numel() and int(t.min()) < 1:
        raise ValueError("t must be >= 1 for a KL term; t = 0 is the decoder term L_0")
    return _kl_and_nll(model, schedule, x0, t, variance, "gaussian", noise, generator)[0]


def decoder_nll(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    variance: str = "beta",
    decoder: str = "discretized",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_0 = -log p(x_data | x_0) per sample, in nats, shape (N,) (papers' -log p(x_0 | x_1)).

    ``decoder="discretized"``: 8-bit data in [-1, 1], the bin masses of
    :func:`discretized_gaussian_log_likelihood` (Ho et al., Sec. 3.3); ``"gaussian"``: continuous
    data, the density of the last reverse Gaussian (for 2D data; not comparable with a
    discrete likelihood).
    """
    n = x0.shape[0] if isinstance(x0, Tensor) else 0
    zeros = torch.zeros(n, dtype=torch.long)
    return _kl_and_nll(model, schedule, x0, zeros, variance, decoder, noise, generator)[1]


def vb_terms(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    t: Tensor | int,
    variance: str = "beta",
    decoder: str = "discretized",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The bound's term L_t at each sample's step t, in nats, shape (N,): the decoder NLL
    (:func:`decoder_nll`) where t = 0 and the KL (:func:`kl_terms`) where t >= 1.

    One model call for the whole batch. With t uniform on 0..T-1, ``T * vb_terms + prior_kl``
    is an unbiased estimate of the bound (the objective of Sohl-Dickstein et al., 2015, and of
    the L_vlb of Nichol & Dhariwal, 2021). Differentiable.
    """
    kl, nll, t = _kl_and_nll(model, schedule, x0, t, variance, decoder, noise, generator)
    return torch.where(t == 0, nll, kl)


@dataclass(frozen=True)
class VariationalBound:
    """The negative variational bound -log p(x_0) <= L_T + L_{T-1} + ... + L_0 (notes Eq. 34;
    Ho et al., 2020, Eq. 5), per sample.

    Attributes:
        prior: L_T, shape (N,), nats.
        terms: shape (N, T); column t is the papers' L_t: the decoder NLL L_0 in column 0 and
            the KL terms in columns 1..T-1 (each from its own draw of x_t ~ q(x_t | x_0)).
        total: the sum, shape (N,), nats.
        bits_per_dim: ``total / (D log 2)``, D the number of coordinates of one sample.
    """

    prior: Tensor
    terms: Tensor
    total: Tensor
    bits_per_dim: Tensor

    @property
    def decoder(self) -> Tensor:
        """L_0, shape (N,)."""
        return self.terms[:, 0]

    @property
    def kl(self) -> Tensor:
        """L_1 .. L_{T-1}, shape (N, T - 1)."""
        return self.terms[:, 1:]


@torch.no_grad()
def variational_bound(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    variance: str = "beta",
    decoder: str = "discretized",
    generator: torch.Generator | None = None,
) -> VariationalBound:
    """Every term of the bound on -log p_theta(x_0) (notes Eq. 34; Ho et al., 2020, Eq. 5;
    Nichol & Dhariwal, 2021, Eq. 4-6), one model call per step (T calls), without gradients.

    ``variance``: ``"beta"``, ``"posterior"`` (the two fixed choices of Ho et al.) or
    ``"learned"``; ``decoder``: ``"discretized"`` for 8-bit data in [-1, 1] (bits per
    dimension comparable with the literature), ``"gaussian"`` for continuous data.
    """
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    n = x0.shape[0]
    columns = []
    for step in range(schedule.T):
        t = torch.full((n,), step, dtype=torch.long, device=x0.device)
        columns.append(vb_terms(model, schedule, x0, t, variance, decoder, generator=generator))
    terms = torch.stack(columns, dim=1)
    prior = prior_kl(schedule, x0)
    total = prior + terms.sum(1)
    dims = x0[0].numel()
    return VariationalBound(prior, terms, total, total / (dims * math.log(2)))


# --------------------------------------------------------------------------- networks


def _time_scale(schedule: Schedule) -> float:
    """Steps 0..T-1 times 1000 / T span the range the sinusoidal embedding is tuned for."""
    return 1000.0 / schedule.T


def ddpm_mlp(
    schedule: Schedule, dim: int = 2, hidden: int = 128, depth: int = 3, **kwargs
) -> nn.Module:
    """A time-conditioned :class:`~dlai_diffusion.nets.ScoreMLP` eps_theta(x, t) for vectors,
    its step embedding scaled by 1000 / T so that any T uses the same frequency range;
    ``kwargs`` go to ScoreMLP (e.g. ``out_dim``)."""
    from .nets import ScoreMLP

    _check_schedule(schedule)
    return ScoreMLP(dim, hidden, depth, time_scale=_time_scale(schedule), **kwargs)


def ddpm_unet(
    schedule: Schedule,
    preset: str = "small",
    in_channels: int = 1,
    image_size: int = 28,
    **overrides,
) -> nn.Module:
    """A :func:`~dlai_diffusion.nets.unet` eps_theta(x, t) for images, its step embedding
    scaled by 1000 / T (the identity for T = 1000, Ho et al.'s setting)."""
    from .nets import unet

    _check_schedule(schedule)
    overrides.setdefault("time_scale", _time_scale(schedule))
    return unet(preset, in_channels, image_size, **overrides)
