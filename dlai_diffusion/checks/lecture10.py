"""Checks for the exercises of lecture 10: classifier and classifier-free guidance.

Each check calls the student's function, compares the result with an independent reference
and prints a short confirmation, or raises ``AssertionError`` saying what is wrong. The
references: the classifier-free noise recomputed from two separate network calls; the
classifier-guided noise from the exact noised Gaussian mixture, whose conditional noise is
known in closed form (Bayes' rule for scores makes the two agree at scale 1); label dropout by
its rate and by what it leaves untouched.

References: Ho & Salimans (2021), "Classifier-free diffusion guidance"; Dhariwal & Nichol
(2021), "Diffusion models beat GANs on image synthesis".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .. import guidance as _guidance
from ..schedules import Schedule
from ..toy import GaussianMixture
from . import call_student as _call
from . import checked_tensor as _checked
from . import close as _close
from . import fixed_mlp as _fixed_mlp
from . import name_mistake as _hint

__all__ = [
    "check_mixture",
    "classifier_free_eps",
    "classifier_guided_eps",
    "drop_labels",
    "mixture_log_prob_fn",
]

_F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _label_net(n_classes: int, seed: int):
    """A small fixed conditional network eps(x, t, y) on 2D data."""
    return _fixed_mlp(2, _F64, seed, n_classes=n_classes)


def check_mixture() -> GaussianMixture:
    """Three overlapping 2D Gaussians, the data of the checks (labels = components)."""
    means = [[-1.5, 0.0], [1.5, 0.0], [0.0, 1.8]]
    return GaussianMixture(means, [0.5, 0.6, 0.4], [0.5, 0.3, 0.2], dtype=_F64)


def mixture_log_prob_fn(mixture: GaussianMixture, schedule: Schedule) -> Callable:
    """``log_prob(x, t, y)`` -> log p(y | x_t), shape (N,), of the exact noised ``mixture``."""
    classifier = _guidance.exact_mixture_classifier(mixture, schedule)

    def log_prob(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return classifier(x, t).gather(1, y.reshape(-1, 1)).squeeze(1)

    return log_prob


# --------------------------------------------------------------------------- exercise (a)


def classifier_free_eps(fn: Callable) -> None:
    """Exercise (a): ``fn(eps_model, x, t, y, scale, null_label)`` is
    eps(x, t, null) + scale (eps(x, t, y) - eps(x, t, null))."""
    for seed, n_classes, scale in [(1, 3, 3.0), (2, 4, 0.5), (3, 10, 7.5), (4, 3, -1.0)]:
        net = _label_net(n_classes, seed)
        n = 12
        x = torch.randn(n, 2, generator=_gen(seed), dtype=_F64)
        t = torch.randint(0, 100, (n,), generator=_gen(10 + seed))
        y = torch.arange(n) % n_classes
        null = torch.full((n,), n_classes)
        where = f"K = {n_classes} classes, scale = {scale}"
        with torch.no_grad():
            got = _checked(_call(fn, net, x, t, y, scale, n_classes), "the guided noise", (n, 2))
            cond, uncond = net(x, t, y), net(x, t, null)
            expected = uncond + scale * (cond - uncond)
            if not _close(got, expected, rtol=1e-8, atol=1e-10):
                hint = _hint(
                    got,
                    {
                        "the conditional and unconditional predictions are swapped": cond
                        + scale * (uncond - cond),
                        "this is Ho & Salimans' form with w = scale: (1 + w) eps_cond - w "
                        "eps_uncond; here scale = 1 must give eps_cond, so use eps_uncond + "
                        "scale (eps_cond - eps_uncond)": (1 + scale) * cond - scale * uncond,
                        "the unconditional prediction must use the null label y = K "
                        "(null_label), not the label": cond,
                        "the guidance direction is eps_cond - eps_uncond, added to eps_uncond, "
                        "not to eps_cond": cond + scale * (cond - uncond),
                    },
                    "it does not match eps_uncond + scale (eps_cond - eps_uncond)",
                )
                raise AssertionError(f"{where}: classifier_free_eps is wrong: {hint}")
    net = _label_net(3, 5)
    x = torch.randn(6, 2, generator=_gen(5), dtype=_F64)
    t, y = torch.full((6,), 7), torch.arange(6) % 3
    with torch.no_grad():
        at_one = _call(fn, net, x, t, y, 1.0, 3)
        at_zero = _call(fn, net, x, t, y, 0.0, 3)
        assert _close(at_one, net(x, t, y), rtol=1e-10, atol=1e-12), (
            "scale = 1 must give the conditional model eps(x, t, y)"
        )
        assert _close(at_zero, net(x, t, torch.full((6,), 3)), rtol=1e-10, atol=1e-12), (
            "scale = 0 must give the unconditional model eps(x, t, null)"
        )
    print("✔ classifier_free_eps matches eps_uncond + s (eps_cond - eps_uncond); s = 1, 0 exact")


# --------------------------------------------------------------------------- exercise (b)


def classifier_guided_eps(fn: Callable) -> None:
    """Exercise (b): ``fn(eps_model, log_prob, alpha_bars, x, t, y, scale)`` is
    eps(x, t) - scale sqrt(1 - alpha_bar_t) grad_x log p(y | x_t)."""
    mixture = check_mixture()
    for T, seed in [(100, 1), (40, 2)]:
        schedule = Schedule.linear(T)
        exact = _guidance.exact_mixture_eps(mixture, schedule)
        log_prob = mixture_log_prob_fn(mixture, schedule)
        classifier = _guidance.exact_mixture_classifier(mixture, schedule)
        n = 15
        x = 1.5 * torch.randn(n, 2, generator=_gen(seed), dtype=_F64)
        t = torch.randint(0, T, (n,), generator=_gen(20 + seed))
        y = torch.arange(n) % 3

        for scale in (1.0, 2.5):
            where = f"T = {T}, scale = {scale}"
            with torch.no_grad():
                got = _call(fn, exact, log_prob, schedule.alpha_bars, x, t, y, scale)
            got = _checked(got, "the guided noise", (n, 2)).detach()
            reference = _guidance.classifier_guided_eps(exact, classifier, schedule, y, scale)
            expected = reference(x, t)
            if not _close(got, expected, rtol=1e-7, atol=1e-9):
                grad = _guidance.classifier_log_prob_grad(classifier, x, t, y)
                ab = schedule.alpha_bars[t].reshape(-1, 1)
                eps = exact(x, t)
                hint = _hint(
                    got,
                    {
                        "the sign of the correction: the guided noise is eps MINUS "
                        "scale sqrt(1 - alpha_bar_t) grad log p(y | x_t)": eps
                        + scale * (1 - ab).sqrt() * grad,
                        "the factor is sqrt(1 - alpha_bar_t), not 1 - alpha_bar_t": eps
                        - scale * (1 - ab) * grad,
                        "the factor is sqrt(1 - alpha_bar_t), not sqrt(alpha_bar_t)": eps
                        - scale * ab.sqrt() * grad,
                        "the classifier gradient must be multiplied by sqrt(1 - alpha_bar_t) "
                        "to become a noise": eps - scale * grad,
                        "the scale is missing": eps - (1 - ab).sqrt() * grad,
                    },
                    "it does not match eps - scale sqrt(1 - alpha_bar_t) grad log p(y | x_t)",
                )
                raise AssertionError(f"{where}: classifier_guided_eps is wrong: {hint}")
        # Bayes' rule for scores: at scale 1 the exact classifier gives the conditional noise.
        with torch.no_grad():
            got = _call(fn, exact, log_prob, schedule.alpha_bars, x, t, y, 1.0)
        assert _close(got.detach(), exact(x, t, y), rtol=1e-7, atol=1e-9), (
            f"T = {T}: at scale 1 with the exact classifier the guided noise must equal the "
            "exact conditional noise (Bayes' rule for scores)"
        )
    print(
        "✔ classifier_guided_eps matches Dhariwal & Nichol's formula and, at scale 1 with the "
        "exact classifier, the exact conditional noise"
    )


# --------------------------------------------------------------------------- exercise (c)


def drop_labels(fn: Callable) -> None:
    """Exercise (c): ``fn(y, p_uncond, null_label, generator)`` replaces each label by the null
    label with probability ``p_uncond``, independently, using ``generator``."""
    n = 20_000
    for p, null, seed in [(0.1, 10, 1), (0.3, 4, 2), (0.5, 7, 3)]:
        y = torch.arange(n) % null
        out = _checked(_call(fn, y, p, null, _gen(seed)), "the dropped labels", (n,))
        assert not out.is_floating_point(), "the labels must stay integers (long)"
        is_null = out == null
        assert torch.equal(out[~is_null], y[~is_null]), (
            "labels that are not dropped must be kept as they are"
        )
        rate = is_null.double().mean().item()
        tolerance = 5 * math.sqrt(p * (1 - p) / n)
        if abs(rate - p) > tolerance:
            hint = (
                "you drop with probability 1 - p_uncond: keep the label where the uniform "
                "draw is >= p_uncond"
                if abs(rate - (1 - p)) < tolerance
                else "each label is replaced independently with probability p_uncond"
            )
            raise AssertionError(
                f"p_uncond = {p}: {rate:.3f} of the labels were dropped, expected {p}: {hint}"
            )
        again = _call(fn, y, p, null, _gen(seed))
        assert torch.equal(out, again), (
            "the same generator seed must give the same dropout: draw every random number "
            "from generator"
        )
        pattern = (out == null)[:5000]
        assert (pattern[:2500] != pattern[2500:]).any(), "the dropout looks periodic, not random"
    y = torch.arange(50) % 5
    assert torch.equal(_call(fn, y, 0.0, 5, _gen(0)), y), "p_uncond = 0 must keep every label"
    assert (_call(fn, y, 1.0, 5, _gen(0)) == 5).all(), "p_uncond = 1 must drop every label"
    print("✔ drop_labels drops at the right rate, keeps the rest, and follows the generator")
