"""Guidance: sampling a diffusion model conditionally, p(x | y), and sharpening the condition.

Bayes' rule for scores. p(x_t | y) = p(y | x_t) p(x_t) / p(y), and p(y) does not depend on
x_t, so the normaliser vanishes under the gradient (notes Eq. 5, as the partition function did
in Eq. 7):

    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t).

With score = -eps / sqrt(1 - alpha_bar_t) this is a correction of the predicted noise, and any
sampler of noise models (``ddpm.sample_ddpm``, ``ddim.sample_ddim``, the probability-flow ODE
through ``sde.score_from_eps``) samples the conditional law unchanged. Guidance multiplies the
correction by a scale s, which sharpens the condition: the target becomes p(x_t) p(y | x_t)^s.

=====================================  =============================================================
what                                   where
=====================================  =============================================================
classifier guidance                    :func:`classifier_guided_eps` (Dhariwal & Nichol, 2021),
                                       the gradient :func:`classifier_log_prob_grad`
a classifier of noisy images           :class:`NoisyClassifier`, :func:`noisy_classifier_loss`
classifier-free guidance               :func:`classifier_free_eps` (Ho & Salimans, 2021)
training with label dropout            :func:`drop_labels`, :func:`conditional_simple_loss`
exact 2D ground truth                  :func:`exact_mixture_eps` (conditional and unconditional
                                       noise of a noised Gaussian mixture),
                                       :func:`exact_mixture_classifier` (p(k | x_t), exact)
diversity of samples                   :func:`mean_pairwise_distance`
=====================================  =============================================================

A conditional noise model is ``model(x, t, y)`` with ``t`` a long tensor (N,) of 0-indexed
steps (the papers' t + 1) and labels ``y`` (N,) in 0..K, where ``y = K`` (the *null label*,
:class:`~dlai_diffusion.nets.UNet` and :class:`~dlai_diffusion.nets.ScoreMLP` with
``n_classes=K``) or ``y = None`` means "no label": the unconditional model. A classifier is
``classifier(x, t) -> logits`` (N, K); its log-softmax is log p(y | x_t).

The guidance scale, one convention throughout. Both guided noises are written with a scale
``s`` such that ``s = 0`` is the unconditional model and ``s = 1`` the plain conditional one
(no extra guidance, "off"):

* classifier-free: eps~ = eps(x, t, null) + s (eps(x, t, y) - eps(x, t, null)), the form of
  most code bases (and of the lecture slides). Ho & Salimans (2021) write
  eps~ = (1 + w) eps(x, t, y) - w eps(x, t, null); the two agree for ``s = 1 + w``, so their
  w = 0 ("no guidance") is our s = 1, and their w = 1, 3 are our s = 2, 4.
* classifier: eps~ = eps(x, t) - s sqrt(1 - alpha_bar_t) grad log p_phi(y | x_t, t)
  (Dhariwal & Nichol, 2021, Algorithm 2 and Eq. 14), the score of p(x_t) p_phi(y | x_t)^s.

References: Dhariwal & Nichol (2021), "Diffusion models beat GANs on image synthesis"; Ho &
Salimans (2021), "Classifier-free diffusion guidance" (NeurIPS workshop; arXiv 2207.12598);
Song et al. (2021), "Score-based generative modeling through stochastic differential
equations" (controllable generation, Sec. 5).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ddpm
from ._utils import check_batch, draw_uniform
from .ddpm import _check_schedule, _draw_steps
from .nets import TimeEmbedding
from .schedules import Schedule
from .toy import GaussianMixture

__all__ = [
    "NoisyClassifier",
    "classifier_free_eps",
    "classifier_guided_eps",
    "classifier_log_prob_grad",
    "conditional_simple_loss",
    "drop_labels",
    "exact_mixture_classifier",
    "exact_mixture_eps",
    "mean_pairwise_distance",
    "noisy_classifier_loss",
]

ConditionalModel = Callable[..., Tensor]
Classifier = Callable[[Tensor, Tensor], Tensor]

# --------------------------------------------------------------------------- validation


def _check_callable(fn: object, name: str, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable as {signature}, got {type(fn).__name__}")


def _check_scale(scale: object) -> float | Tensor:
    """A finite real number, or a float tensor (N,) of one scale per sample."""
    if isinstance(scale, Tensor):
        if scale.ndim > 1 or not scale.is_floating_point() or not torch.isfinite(scale).all():
            raise ValueError("scale must be a finite number or a float tensor (N,) of scales")
        return scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _check_label(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _labels(y: object, n: int, device: torch.device) -> Tensor:
    """``y`` (an int, a 0-d or (N,) integer tensor) as a long tensor (N,) on ``device``."""
    if isinstance(y, numbers.Integral) and not isinstance(y, bool):
        y = torch.tensor(int(y))
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be an int or an integer tensor of labels, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    if y.ndim == 0:
        y = y.reshape(1).expand(n)
    if y.shape != (n,):
        raise ValueError(f"y must be an int or have shape ({n},), got {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError("y must hold non-negative labels")
    return y.to(device=device, dtype=torch.long)


def _steps(t: object, n: int, device: torch.device) -> Tensor:
    """Steps as given by a sampler (an int or a tensor (N,)) as a tensor (N,)."""
    t = torch.as_tensor(t, device=device)
    return t.reshape(1).expand(n) if t.ndim == 0 else t


def _per_sample(value: float | Tensor, x: Tensor) -> float | Tensor:
    """A scalar, or a tensor (N,) shaped to broadcast against ``x``."""
    if isinstance(value, Tensor):
        if value.ndim == 1 and value.shape[0] != x.shape[0]:
            raise ValueError(f"scale must have shape ({x.shape[0]},), got {tuple(value.shape)}")
        return value.to(x).reshape(-1, *[1] * (x.ndim - 1))
    return value


def _null_label(model: object, null_label: int | None) -> int:
    """The null label: given, or the ``n_classes`` of a UNet / ScoreMLP with labels."""
    if null_label is not None:
        return _check_label(null_label, "null_label")
    found = getattr(model, "n_classes", None)
    if found is None:
        found = getattr(getattr(model, "label_embedding", None), "n_classes", None)
    if found is None:
        raise ValueError(
            "null_label is needed: the model does not say how many classes it has "
            "(pass null_label=K for labels 0..K-1)"
        )
    return int(found)


# --------------------------------------------------------------------------- classifier-free


def drop_labels(
    y: Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p_uncond`` (independently).

    Label dropout trains one network as both the conditional model eps(x, t, y) and the
    unconditional one eps(x, t, null) (Ho & Salimans, 2021, Algorithm 1; they use
    p_uncond = 0.1 or 0.2). ``y`` (N,) integer labels; returns a new long tensor (N,).
    """
    if not isinstance(y, Tensor) or y.ndim != 1:
        raise ValueError("y must be a 1-D integer tensor of labels, shape (N,)")
    y = _labels(y, y.shape[0], y.device)
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, numbers.Real):
        raise TypeError(f"p_uncond must be a number in [0, 1], got {type(p_uncond).__name__}")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    null_label = _check_label(null_label, "null_label")
    dropped = draw_uniform(y.shape, generator, device=y.device) < p_uncond
    return torch.where(dropped, torch.full_like(y, null_label), y)


def conditional_simple_loss(
    model: ConditionalModel,
    schedule: Schedule,
    x0: Tensor,
    y: Tensor,
    generator: torch.Generator | None = None,
    *,
    p_uncond: float = 0.1,
    null_label: int | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The simple loss (notes Eq. 37) of a conditional noise model ``model(x_t, t, y)``, with
    label dropout: || eps - eps_theta(x_t, t, y~) ||^2, y~ = :func:`drop_labels` (y).

    Classifier-free guidance's training (Ho & Salimans, 2021, Algorithm 1). The labels are
    dropped first, then t and eps are drawn as in :func:`dlai_diffusion.ddpm.simple_loss`
    (all from ``generator``). ``null_label``: default the model's ``n_classes``.
    """
    _check_callable(model, "model", "model(x, t, y)")
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError("x0 must be a floating tensor of shape (N, d) or (N, C, H, W)")
    null = _null_label(model, null_label)
    labels = drop_labels(_labels(y, x0.shape[0], x0.device), p_uncond, null, generator)
    return ddpm.simple_loss(
        lambda x, steps: model(x, steps, labels),
        schedule,
        x0,
        generator,
        t=t,
        noise=noise,
        reduction=reduction,
    )


def classifier_free_eps(
    model: ConditionalModel,
    y: Tensor | int | None,
    scale: float | Tensor,
    null_label: int | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Classifier-free guided noise eps~(x, t) (Ho & Salimans, 2021):

        eps~ = eps(x, t, null) + s (eps(x, t, y) - eps(x, t, null)),   s = ``scale``.

    ``s = 1`` is the conditional model, exactly (one network call); ``s = 0`` and ``y = None``
    the unconditional one, exactly (one call); ``s > 1`` guides. Ho & Salimans' weight is
    ``w = s - 1`` (their eps~ = (1 + w) eps_cond - w eps_uncond). Other scales make one
    batched call on [x; x] with the labels [y; null]. The implied score is that of
    p(x_t | y)^s p(x_t)^(1 - s), i.e. of p(x_t) p(y | x_t)^s with the classifier implicit in
    the model (notes Eq. 5).

    ``y``: an int or labels (N,) (``None``: unconditional); ``scale``: a number or one per
    sample (N,); ``null_label``: default the model's ``n_classes``. The returned ``eps_fn(x,
    t)`` is a noise model for ``ddpm.sample_ddpm``, ``ddim.sample_ddim`` and
    ``sde.score_from_eps``.
    """
    _check_callable(model, "model", "model(x, t, y)")
    scale = _check_scale(scale)
    null = _null_label(model, null_label)
    if y is not None:
        _labels(y, 1 if not isinstance(y, Tensor) or y.ndim == 0 else y.shape[0], "cpu")

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        steps = _steps(t, n, x.device)
        cond = torch.full((n,), null, device=x.device) if y is None else _labels(y, n, x.device)
        uncond = torch.full_like(cond, null)
        if isinstance(scale, float) and scale == 1.0:
            return model(x, steps, cond)
        if y is None or (isinstance(scale, float) and scale == 0.0):
            return model(x, steps, uncond)
        both = model(torch.cat([x, x]), torch.cat([steps, steps]), torch.cat([cond, uncond]))
        eps_cond, eps_uncond = both[:n], both[n:]
        return eps_uncond + _per_sample(scale, x) * (eps_cond - eps_uncond)

    return eps_fn


# --------------------------------------------------------------------------- classifier


def classifier_log_prob_grad(classifier: Classifier, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """grad_x log p_phi(y | x_t, t) by autograd, shape of ``x`` (works inside ``no_grad``).

    ``classifier(x, t)`` returns logits (N, K); log p = log_softmax(logits)[y]. Samples are
    independent, so the gradient of the sum over the batch is each sample's own gradient
    (keep the classifier in eval mode: batch statistics would couple the samples).
    """
    _check_callable(classifier, "classifier", "classifier(x, t) -> logits (N, K)")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating tensor")
    labels = _labels(y, x.shape[0], x.device)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, t)
        if not isinstance(logits, Tensor) or logits.shape[:1] != x.shape[:1] or logits.ndim != 2:
            raise ValueError("classifier(x, t) must return logits of shape (N, K)")
        if labels.numel() and int(labels.max()) >= logits.shape[1]:
            raise ValueError(f"y must lie in 0..{logits.shape[1] - 1} for this classifier")
        log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, x_in)
    return grad


def classifier_guided_eps(
    model: Callable[[Tensor, Tensor], Tensor],
    classifier: Classifier,
    schedule: Schedule,
    y: Tensor | int,
    scale: float | Tensor = 1.0,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Classifier-guided noise (Dhariwal & Nichol, 2021, Eq. 14 and Algorithm 2):

        eps~(x_t, t) = eps(x_t, t) - s sqrt(1 - alpha_bar_t) grad log p_phi(y | x_t, t).

    Since eps = -sqrt(1 - alpha_bar_t) score, this is the noise of the score grad log p(x_t) +
    s grad log p_phi(y | x_t): Bayes' rule for scores (notes Eq. 5) with the likelihood raised
    to the power s. ``s = 0`` is the unconditional ``model(x, t)``; ``s = 1`` the exact
    conditional model when the classifier is exact (:func:`exact_mixture_classifier`).

    The classifier must know the noise level (``classifier(x_t, t)``: trained on noisy inputs,
    :func:`noisy_classifier_loss`), and every sampling step costs one backward pass through it.
    ``y``: an int or labels (N,); ``scale``: a number or one per sample (N,).
    """
    _check_callable(model, "model", "model(x, t)")
    _check_callable(classifier, "classifier", "classifier(x, t) -> logits (N, K)")
    _check_schedule(schedule)
    scale = _check_scale(scale)
    _labels(y, 1 if not isinstance(y, Tensor) or y.ndim == 0 else y.shape[0], "cpu")

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        steps = _steps(t, x.shape[0], x.device)
        eps = model(x, steps)
        if isinstance(scale, float) and scale == 0.0:
            return eps
        grad = classifier_log_prob_grad(classifier, x, steps, y)
        noise_scale = schedule.gather("sqrt_one_minus_alpha_bars", steps, x)
        return eps - _per_sample(scale, x) * noise_scale * grad

    return eps_fn


class _ClassifierBlock(nn.Module):
    """norm-SiLU-conv (stride 2), + the time embedding, norm-SiLU-conv, with a skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(math.gcd(c_out, groups), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride=2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class NoisyClassifier(nn.Module):
    """A small time-conditioned classifier of noisy images, ``classifier(x_t, t) -> logits``.

    The classifier of classifier guidance must read x_t at every noise level (Dhariwal &
    Nichol, 2021, use the down half of their U-Net). Here: a 3x3 convolution, two residual
    blocks that halve the resolution (28 -> 14 -> 7), each receiving the step embedding
    (sinusoidal, ``time_scale * t``: use 1000 / T as ``ddpm.ddpm_unet`` does), GroupNorm, SiLU
    (smooth, so its input gradient is smooth), global average pooling and a linear read-out.
    x (N, C, H, W), t (N,) -> (N, n_classes).
    """

    def __init__(
        self,
        n_classes: int = 10,
        in_channels: int = 1,
        channels: int = 32,
        *,
        time_scale: float = 1.0,
        groups: int = 8,
    ):
        super().__init__()
        for value, name in ((n_classes, "n_classes"), (in_channels, "in_channels")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.n_classes, self.in_channels = n_classes, in_channels
        emb_dim = 4 * channels
        self.time_embedding = TimeEmbedding(emb_dim, feature_dim=channels, time_scale=time_scale)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            [
                _ClassifierBlock(channels, 2 * channels, emb_dim, groups),
                _ClassifierBlock(2 * channels, 2 * channels, emb_dim, groups),
            ]
        )
        self.norm_out = nn.GroupNorm(math.gcd(2 * channels, groups), 2 * channels)
        self.head = nn.Linear(2 * channels, n_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        emb = F.silu(self.time_embedding(_steps(t, x.shape[0], x.device)))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


def noisy_classifier_loss(
    classifier: Classifier,
    schedule: Schedule,
    x0: Tensor,
    y: Tensor,
    generator: torch.Generator | None = None,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of ``classifier(x_t, t)`` against the labels of the clean data, with x_t ~
    q(x_t | x_0) at steps t uniform on 0..T-1 (Dhariwal & Nichol, 2021, Sec. 4).

    The draws (t, then eps) come from ``generator`` unless given. Returns a scalar tensor.
    """
    _check_callable(classifier, "classifier", "classifier(x, t) -> logits (N, K)")
    _check_schedule(schedule)
    check_batch(x0, "x0")
    labels = _labels(y, x0.shape[0], x0.device)
    if t is None:
        t = _draw_steps(x0.shape[0], schedule.T, generator, x0.device)
    t = schedule.check_steps(t, x0.shape[0]).to(x0.device)
    xt = ddpm.q_sample(schedule, x0, t, noise, generator)
    return F.cross_entropy(classifier(xt, t), labels)


# --------------------------------------------------------------------------- exact 2D truth


def _noised_components(mixture: GaussianMixture, schedule: Schedule, step: int):
    """The mixture of x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, x_0 ~ mixture."""
    signal = float(schedule.sqrt_alpha_bars[step])
    noise = float(schedule.sqrt_one_minus_alpha_bars[step])
    return mixture.diffuse(signal, noise), noise


def _check_mixture(mixture: object, schedule: object) -> GaussianMixture:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(
            f"mixture must be a dlai_diffusion.toy.GaussianMixture, got {type(mixture).__name__}"
        )
    _check_schedule(schedule)
    return mixture


def _per_step(fn: Callable[..., Tensor], t: object, x: Tensor, *extra: Tensor | None) -> Tensor:
    """``fn(step, x_rows, *extra_rows)`` on the rows of each distinct step (samplers use one)."""
    steps = _steps(t, x.shape[0], x.device)
    if steps.shape != (x.shape[0],):
        raise ValueError(f"t must be an int or have shape ({x.shape[0]},)")
    distinct = torch.unique(steps).tolist()
    if len(distinct) == 1:
        return fn(int(distinct[0]), x, *extra)
    out = None
    for step in distinct:
        mask = steps == step
        part = fn(int(step), x[mask], *(None if e is None else e[mask] for e in extra))
        if out is None:
            out = part.new_empty(x.shape[0], *part.shape[1:])
        out[mask] = part
    return out


def exact_mixture_eps(mixture: GaussianMixture, schedule: Schedule) -> ConditionalModel:
    """The exact conditional noise model of data drawn from a Gaussian mixture, whose labels
    are its components: ``model(x_t, t, y=None)``.

    eps(x_t, t, y) = -sqrt(1 - alpha_bar_t) grad log q(x_t | y): for a label k, the noised
    component N(sqrt(alpha_bar_t) m_k, (alpha_bar_t s_k^2 + 1 - alpha_bar_t) I); for
    ``y=None`` or the null label K, the whole noised mixture (``toy.GaussianMixture.diffuse``).
    The ideal network that classifier-free guidance trains; ``model.n_classes`` is K.
    """
    mixture = _check_mixture(mixture, schedule)
    k = mixture.n_components

    def model(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        labels = None if y is None else _labels(y, x.shape[0], x.device)
        if labels is not None and labels.numel() and int(labels.max()) > k:
            raise ValueError(f"y must lie in 0..{k} (K = {k} is the null label)")

        def eps(step: int, rows: Tensor, rows_labels: Tensor | None) -> Tensor:
            noised, noise = _noised_components(mixture, schedule, step)
            score = noised.score(rows)
            if rows_labels is not None:
                own = rows_labels < k
                picked = rows_labels.clamp(max=k - 1)
                means, stds = noised.means.to(rows)[picked], noised.stds.to(rows)[picked]
                component = -(rows - means) / stds[:, None] ** 2
                score = torch.where(own[:, None], component, score)
            return -noise * score

        return _per_step(eps, t, x, labels)

    model.n_classes = k
    return model


def exact_mixture_classifier(mixture: GaussianMixture, schedule: Schedule) -> Classifier:
    """The exact noise-aware classifier of a Gaussian mixture: ``classifier(x_t, t)`` returns
    log p(k | x_t), shape (N, K), the responsibilities of the noised mixture (Bayes' rule,
    notes Eq. 5). Differentiable in x_t; its log-softmax is itself."""
    mixture = _check_mixture(mixture, schedule)

    def classifier(x: Tensor, t: Tensor) -> Tensor:
        def log_posterior(step: int, rows: Tensor) -> Tensor:
            log_joint = _noised_components(mixture, schedule, step)[0].log_prob_components(rows)
            return torch.log_softmax(log_joint, dim=-1)

        return _per_step(log_posterior, t, x)

    return classifier


# --------------------------------------------------------------------------- evaluation


def mean_pairwise_distance(features: Tensor, labels: Tensor | None = None) -> float:
    """Mean Euclidean distance between distinct rows of ``features`` (N, D): a simple diversity
    measure (guidance trades it for fidelity). With ``labels`` (N,), the mean over the groups
    of the within-group means (groups with fewer than 2 rows are skipped)."""
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] < 2:
        raise ValueError("features must be a tensor of shape (N, D) with N >= 2")
    if labels is None:
        return torch.pdist(features.double()).mean().item()
    labels = _labels(labels, features.shape[0], features.device)
    groups = [features[labels == c] for c in torch.unique(labels).tolist()]
    values = [torch.pdist(g.double()).mean() for g in groups if g.shape[0] >= 2]
    if not values:
        raise ValueError("no label has 2 or more rows")
    return torch.stack(values).mean().item()
