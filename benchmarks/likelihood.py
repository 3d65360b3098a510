"""2D likelihood: the probability-flow ODE estimate of log p(x) against the exact value.

The data is the eight-Gaussian mixture, whose log-density is known in closed form, and so is
the score of its VP-noised marginals (``GaussianMixture.diffuse``). With that exact score,
``sde.log_likelihood`` integrates the probability-flow ODE from the data to the prior and
adds the integral of the divergence (Song et al., 2021, Sec. 4.3; Chen et al., 2018): the only
errors left are the ODE solver's, the small-time cut-off and, with Hutchinson's estimator, its
variance. A score network trained by continuous DSM gives the learned row (informative).
"""

from __future__ import annotations

import torch

from .common import SectionResult, Stopwatch, Target, mode_name, torch_threads

QUICK = {"n_points": 32, "hutchinson_probes": 1, "learned_steps": 400}
FULL = {"n_points": 500, "hutchinson_probes": 4, "learned_steps": 5000}
TOLERANCE = 0.05
"""nats: the target for the mean absolute error with the exact score and exact divergence."""


def exact_vp_score(mixture, sde):
    """score(x, t) of the VP-noised mixture at time t, exact (one mixture per distinct t)."""

    def score(x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for value in torch.unique(t):
            rows = t == value
            scale, std = sde.marginal(value.reshape(1))
            noised = mixture.diffuse(
                float(torch.as_tensor(scale).reshape(-1)[0]),
                float(torch.as_tensor(std).reshape(-1)[0]),
            )
            out[rows.to(x.device)] = noised.score(x[rows.to(x.device)]).to(x.dtype)
        return out

    return score


def _errors(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    error = estimate.double().cpu() - truth.double().cpu()
    return {
        "mean_abs_error": error.abs().mean().item(),
        "max_abs_error": error.abs().max().item(),
        "mean_error": error.mean().item(),
        "mean_log_p": truth.double().mean().item(),
    }


def run(quick: bool) -> SectionResult:
    sizes = dict(QUICK if quick else FULL)
    result = SectionResult(
        name="likelihood",
        title="2D likelihood: probability-flow ODE against the exact log-density",
        mode=mode_name(quick),
        sizes=sizes,
        columns=["score", "divergence", "n_points", "mean_log_p", "mean_abs_error"]
        + ["max_abs_error", "mean_error", "seconds"],
    )
    from dlai_diffusion import sde as sde_lib
    from dlai_diffusion import toy

    mixture = toy.eight_gaussians(dtype=torch.float64)
    vp = sde_lib.VPSDE()
    generator = torch.Generator().manual_seed(0)
    x = mixture.sample(sizes["n_points"], generator)
    truth = mixture.log_prob(x)
    score = exact_vp_score(mixture, vp)
    with torch_threads(1):
        for divergence in ("exact", "hutchinson"):
            kwargs = {"divergence": divergence}
            if divergence == "hutchinson":
                kwargs.update(n_probes=sizes["hutchinson_probes"], generator=generator)
            with Stopwatch() as watch:
                estimate = sde_lib.log_likelihood(score, vp, x, **kwargs)
            row = {"score": "exact", "divergence": divergence, "n_points": len(x)}
            result.rows.append({**row, **_errors(estimate, truth), "seconds": watch.seconds})
            if divergence == "hutchinson":
                result.rows[-1]["divergence"] += f" ({sizes['hutchinson_probes']} probe(s))"
        try:
            result.rows.append(_learned_row(x, truth, sizes))
        except Exception as error:
            result.notes.append(f"learned score: {type(error).__name__}: {error}")
    exact = result.rows[0]
    result.targets.append(
        Target(
            "ODE likelihood, exact score",
            f"mean |error| ≤ {TOLERANCE} nats (exact score)",
            f"{exact['mean_abs_error']:.4f} nats (max {exact['max_abs_error']:.3f})",
            exact["mean_abs_error"] <= TOLERANCE,
        )
    )
    return result


def _learned_row(x: torch.Tensor, truth: torch.Tensor, sizes: dict) -> dict:
    """The same estimate with a score network trained on the mixture (informative)."""
    from dlai_diffusion import sde as sde_lib

    from .toy2d import train_vp_sde

    score, vp, seconds = train_vp_sde("8gaussians", sizes["learned_steps"])
    xf = x.float()
    with Stopwatch() as watch:
        estimate = sde_lib.log_likelihood(score, vp, xf, divergence="exact")
    row = {"score": f"learned ({sizes['learned_steps']} steps)", "divergence": "exact"}
    return {**row, "n_points": len(x), **_errors(estimate, truth), "seconds": watch.seconds}
