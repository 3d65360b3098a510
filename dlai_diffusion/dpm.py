"""Diffusion probabilistic models (Sohl-Dickstein et al., 2015): a reverse kernel with a learned
mean and a learned, bounded variance, trained on the variational bound (notes Sec. 6).

The forward process is the fixed Gaussian diffusion of notes Eq. 28 (a
:class:`~dlai_diffusion.schedules.Schedule`). The reverse kernel (notes Eq. 32) is a diagonal
Gaussian whose mean and variance both come from one network with twice the data's channels,
split by :class:`DPMReverse` as in the authors' code:

* mean: a perturbation of the forward step, mu = sqrt(1 - beta_t) x_t + sqrt(beta_t) f_mu(x_t, t);
* variance, ``variance="sigmoid"`` (Sohl-Dickstein et al.): sigma^2 = sigmoid(logit(beta_t) +
  f_sigma(x_t, t)), which stays in (0, 1) and equals beta_t when f_sigma = 0;
* or ``variance="interpolated"`` (Nichol & Dhariwal, 2021, Eq. 15): log sigma^2 =
  v log beta_t + (1 - v) log beta tilde_t with v = sigmoid(f_sigma), so sigma^2 stays between
  the two fixed choices of Ho et al. (2020), which bound the optimal variance.

Training minimises a stochastic estimate of the bound (notes Eq. 34), :func:`dpm_loss`: one
random step per sample, its term L_t scaled by T, plus the constant L_T. For continuous 2D data
the last term L_0 is the Gaussian density of the data under the last reverse step.
Sampling is ancestral, as for DDPM (:func:`sample_dpm`). The kernel plugs into every function
of :mod:`dlai_diffusion.ddpm` with ``variance="learned"``, e.g. ``ddpm.variational_bound``.

References: Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), "Deep unsupervised
learning using nonequilibrium thermodynamics", Sec. 2 and their code
(github.com/Sohl-Dickstein/Diffusion-Probabilistic-Models); Nichol & Dhariwal (2021),
"Improved denoising diffusion probabilistic models", Sec. 3.1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ddpm import (
    ReverseGaussian,
    _check_batch,
    _check_schedule,
    _draw_steps,
    ddpm_mlp,
    prior_kl,
    sample_ddpm,
    vb_terms,
)
from .schedules import Schedule

__all__ = ["DPMReverse", "dpm_loss", "dpm_mlp", "sample_dpm"]

_PARAMETERISATIONS = ("sigmoid", "interpolated")


class DPMReverse(nn.Module):
    """The reverse kernel p(x_{t-1} | x_t) = N(mu, diag(sigma^2)) of a diffusion probabilistic
    model (notes Eq. 32): ``kernel(x_t, t)`` returns a
    :class:`~dlai_diffusion.ddpm.ReverseGaussian`.

    ``net(x_t, t)`` must return 2C channels for data of C channels ((N, 2d) for vectors,
    (N, 2C, H, W) for images): the first half is f_mu, the second f_sigma (see the module
    docstring for how they become the mean and the variance; ``variance`` is ``"sigmoid"`` or
    ``"interpolated"``). ``t``: long tensor (N,) of 0-indexed steps. The schedule is kept
    (as ``self.schedule``) because the kernel is defined relative to the forward step.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, variance: str = "sigmoid"):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        if variance not in _PARAMETERISATIONS:
            raise ValueError(
                f"variance must be one of {list(_PARAMETERISATIONS)}, got {variance!r}"
            )
        self.net = net
        self.schedule = _check_schedule(schedule)
        self.variance = variance
        self._on_device: dict[torch.device, Schedule] = {}

    def _schedule_on(self, device: torch.device) -> Schedule:
        """The schedule's tables on ``device`` (made once per device)."""
        if device not in self._on_device:
            self._on_device[device] = self.schedule.to(device)
        return self._on_device[device]

    def extra_repr(self) -> str:
        return f"variance={self.variance!r}, T={self.schedule.T}"

    def forward(self, x: Tensor, t: Tensor | int) -> ReverseGaussian:
        _check_batch(x, "x")
        s = self._schedule_on(x.device)
        t = s.check_steps(t, x.shape[0]).to(x.device)
        out = self.net(x, t)
        expected = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        if not isinstance(out, Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"net must return shape {expected} (mean and variance), got {got}")
        f_mu, f_sigma = out.chunk(2, dim=1)
        beta = s.gather("betas", t, x)
        mean = (1 - beta).sqrt() * x + beta.sqrt() * f_mu
        if self.variance == "sigmoid":
            log_variance = F.logsigmoid(torch.logit(beta) + f_sigma)
        else:
            v = torch.sigmoid(f_sigma)
            log_tilde = s.gather("posterior_log_variance_clipped", t, x)
            log_variance = v * beta.log() + (1 - v) * log_tilde
        return ReverseGaussian(mean, log_variance.exp(), log_variance, None)


def dpm_mlp(
    schedule: Schedule,
    dim: int = 2,
    hidden: int = 128,
    depth: int = 3,
    variance: str = "sigmoid",
) -> DPMReverse:
    """A :class:`DPMReverse` around a time-conditioned MLP with 2 * dim outputs (for 2D data)."""
    net = ddpm_mlp(schedule, dim, hidden, depth, out_dim=2 * dim)
    return DPMReverse(net, schedule, variance)


def dpm_loss(
    model: DPMReverse,
    schedule: Schedule,
    x0: Tensor,
    generator: torch.Generator | None = None,
    decoder: str = "gaussian",
) -> Tensor:
    """An unbiased estimate of the negative bound (notes Eq. 34) in nats per sample, batch mean.

    Each sample gets one step t uniform on 0..T-1 and contributes T * L_t + L_T
    (:func:`~dlai_diffusion.ddpm.vb_terms`, :func:`~dlai_diffusion.ddpm.prior_kl`): the KL
    between the forward posterior and the learned kernel for t >= 1, the decoder's negative
    log-likelihood of x_0 for t = 0 (``decoder="gaussian"`` for continuous data). Its
    expectation is ``ddpm.variational_bound(model, schedule, x0, "learned", decoder).total``,
    and its gradient trains mean and variance together, as Sohl-Dickstein et al. (2015) did.
    """
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    t = _draw_steps(x0.shape[0], schedule.T, generator, x0.device)
    terms = vb_terms(model, schedule, x0, t, "learned", decoder, generator=generator)
    return (schedule.T * terms + prior_kl(schedule, x0)).mean()


def sample_dpm(
    model: DPMReverse,
    x_init: Tensor,
    schedule: Schedule,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Ancestral sampling through the learned kernels from ``x_init`` ~ N(0, I) (notes Sec. 6,
    "Sampling"): x_{t-1} ~ N(mu(x_t, t), sigma^2(x_t, t)), no noise at the last step. The
    callback is that of :func:`~dlai_diffusion.ddpm.sample_ddpm`."""
    return sample_ddpm(model, x_init, schedule, "learned", False, generator, callback)
