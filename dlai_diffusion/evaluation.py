"""Quality figures of the course's MNIST models, measured one way everywhere.

The protocol (used by ``scripts/pretrain.py``, the benchmarks and the image lectures):

* **Reference and floor.** A seeded permutation of the MNIST test digits gives two disjoint
  sets of ``n`` digits (:func:`mnist_reference`): samples are compared with the first, and the
  **floor** is the LeNet FID between the two, what a perfect sampler scores at this ``n``
  (the estimate shrinks as ``n`` grows, so FIDs are compared only at equal ``n``).
* **FID** with :func:`dlai_diffusion.metrics.classifier_fid` (LeNet features).
* **Recognisable digits**: the 11-class digit judge (:func:`dlai_diffusion.metrics.judge_digits`),
  whose "not a digit" class keeps it from being confident on noise.
* **Guidance**: accuracy of the 10-class LeNet on guided samples against the asked labels,
  and within-class diversity (:func:`dlai_diffusion.guidance.mean_pairwise_distance` of
  LeNet features).

:func:`draw` runs any sampler in batches, under bf16 autocast on a CPU or GPU when asked
(about 2.2x faster on a CPU with bf16 units; the record of a measurement says which).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import metrics
from ._utils import draw_normal

__all__ = [
    "accuracy_and_diversity",
    "autocast",
    "draw",
    "fid_against",
    "measure_cfg_model",
    "measure_ddpm_model",
    "measure_flow_model",
    "measure_noisy_classifier",
    "mnist_reference",
]


def mnist_reference(n: int = 1000, seed: int = 0, subset: bool | None = None):
    """Two disjoint sets of ``n`` MNIST test digits, (reference, other), from a permutation
    seeded by ``seed``; ``subset`` as in :func:`dlai_diffusion.data.load_mnist` (the shipped
    subset has 1000 test digits, so ``n`` <= 500 there)."""
    from .data import load_mnist

    test = load_mnist("test", subset=subset)
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= 2 * n <= len(test):
        raise ValueError(f"n must be an int in 1..{len(test) // 2}, got {n!r}")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    return test.images[order[:n]], test.images[order[n : 2 * n]]


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA and CPU (a no-op elsewhere or when not ``enabled``)."""
    kind = torch.device(device).type
    if not enabled or kind not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16)


def draw(
    sampler: Callable[[Tensor, Tensor | None], Tensor],
    n: int,
    shape: tuple[int, ...] = (1, 28, 28),
    *,
    labels: Tensor | None = None,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> Tensor:
    """``n`` samples of ``sampler(x_init, labels_of_the_batch)`` from x_init ~ N(0, I), in
    batches of ``batch_size``, returned in float32 on the CPU, clamped to [-1, 1].

    ``labels`` (n,) are split with the batches (``None`` is passed when absent); every draw
    comes from ``generator``."""
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x = draw_normal((m, *shape), generator, device)
        y = None if labels is None else labels[start : start + m].to(device)
        with autocast(device, bf16):
            out.append(sampler(x, y).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def fid_against(samples: Tensor, reference: Tensor) -> float:
    """LeNet FID of ``samples`` against ``reference`` (equal sizes recommended)."""
    return metrics.classifier_fid(samples.float().cpu(), reference.float().cpu())


def accuracy_and_diversity(samples: Tensor, labels: Tensor) -> tuple[float, float]:
    """(share of samples whose LeNet digit is the asked label, mean within-class distance of
    their LeNet features)."""
    from .guidance import mean_pairwise_distance

    samples, labels = samples.float().cpu(), labels.cpu()
    accuracy = (metrics.predict_digits(samples) == labels).float().mean().item()
    return accuracy, mean_pairwise_distance(metrics.lenet_features(samples), labels)


def _fid_of(sampler, n, reference, generator, device, bf16, labels=None):
    """(samples, FID against ``reference``, seconds) of ``n`` draws of ``sampler``."""
    start = time.time()
    samples = draw(sampler, n, labels=labels, generator=generator, device=device, bf16=bf16)
    return samples, fid_against(samples, reference), time.time() - start


def _standard_error(values: Tensor) -> float:
    return (values.std() / values.numel() ** 0.5).item()


def _common(n: int, floor: float, bf16: bool) -> dict:
    return {"n": n, "reference": f"{n} MNIST test digits", "fid_floor": floor,
            "precision": "bf16 autocast" if bf16 else "float32", "clip_x0": True}


def measure_ddpm_model(
    model: nn.Module,
    schedule,
    n: int = 1000,
    *,
    device: torch.device | str = "cpu",
    bf16: bool = True,
    seed: int = 0,
    subset: bool | None = None,
    ode_tol: float = 1e-5,
) -> dict[str, dict]:
    """Every quality figure of an unconditional DDPM noise model ``model(x, t)``, as recorded
    for ``ddpm-mnist``.

    FID of ``n`` ancestral samples (T steps, variance beta, x0 clipped) against ``n`` test
    digits next to the floor; recognisable digits among the first 64 (the digit judge) next to
    64 real ones; FID of deterministic DDIM (eta = 0, uniform spacing) at 10, 20, 50 and 100
    steps; bits per dimension of up to 256 test digits by the probability-flow ODE (Hutchinson,
    uniform dequantisation, tolerance ``ode_tol``) and by the variational bound, each with its
    standard error. Returns ``{"ddpm-mnist": {...}}``.
    """
    from . import ddim, ddpm, sde

    reference, other = mnist_reference(n, seed, subset)
    floor = fid_against(other, reference)
    generator = torch.Generator().manual_seed(seed)
    common = dict(n=n, reference=reference, generator=generator, device=device, bf16=bf16)

    ancestral, fid_ancestral, seconds = _fid_of(
        lambda x, y: ddpm.sample_ddpm(model, x, schedule, clip_x0=True, generator=generator),
        **common)
    judged = metrics.judge_digits(ancestral[:64])
    real = metrics.judge_digits(reference[:64])
    print(f"ancestral: FID {fid_ancestral:.2f} (floor {floor:.2f}), "
          f"{int(judged.recognisable.sum())}/64 recognisable ({seconds:.0f} s)", flush=True)
    ddim_fid = {}
    for steps in [k for k in (10, 20, 50, 100) if k <= schedule.T]:
        _, ddim_fid[steps], seconds = _fid_of(
            lambda x, y, k=steps: ddim.sample_ddim(model, x, schedule, k, clip_x0=True), **common)
        print(f"DDIM {steps}: FID {ddim_fid[steps]:.2f} ({seconds:.0f} s)", flush=True)

    n_ll = min(256, n)
    x0 = reference[:n_ll].to(device)
    dequantised = x0 + torch.rand(x0.shape, generator=generator).to(device) / 127.5
    vp = sde.VPSDE.from_schedule(schedule)
    start = time.time()
    stats: dict = {}
    nll = -sde.log_likelihood(sde.score_from_eps(model, schedule), vp, dequantised,
                              divergence="hutchinson", generator=generator, rtol=ode_tol,
                              atol=ode_tol, stats=stats)
    ode_bpd = sde.bits_per_dim(nll, x0[0].numel())
    ode_seconds = time.time() - start
    bound_bpd = ddpm.variational_bound(model, schedule, x0, "beta", "discretized",
                                       generator).bits_per_dim
    print(f"bits/dim on {n_ll} test digits: ODE {ode_bpd.mean():.3f} +- "
          f"{_standard_error(ode_bpd):.3f} ({ode_seconds:.0f} s), bound "
          f"{bound_bpd.mean():.3f} +- {_standard_error(bound_bpd):.3f}", flush=True)
    return {"ddpm-mnist": {
        **_common(n, floor, bf16),
        "ancestral_steps": schedule.T,
        "ancestral_variance": "beta",
        "fid_ancestral": fid_ancestral,
        "recognisable_of_64": int(judged.recognisable.sum()),
        "recognisable_of_64_real": int(real.recognisable.sum()),
        "judge_confidence": judged.confidence.mean().item(),
        "judge_confidence_real": real.confidence.mean().item(),
        "fid_ddim_eta0": ddim_fid,
        "likelihood_digits": n_ll,
        "bits_per_dim_ode": ode_bpd.mean().item(),
        "bits_per_dim_ode_se": _standard_error(ode_bpd),
        "bits_per_dim_ode_estimator": f"Hutchinson, 1 Rademacher probe, RK45 rtol = atol = "
                                      f"{ode_tol:g}, uniform dequantisation",
        "bits_per_dim_ode_evaluations": stats.get("nfe"),
        "bits_per_dim_bound": bound_bpd.mean().item(),
        "bits_per_dim_bound_se": _standard_error(bound_bpd),
    }}


GUIDANCE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
"""Classifier-free guidance weights w (Ho & Salimans) at which ``cfg-mnist`` is measured."""

CLASSIFIER_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Classifier-guidance scales s (Dhariwal & Nichol) at which the noisy classifier is measured."""


def measure_cfg_model(
    net: nn.Module,
    schedule,
    n: int = 1000,
    *,
    device: torch.device | str = "cpu",
    bf16: bool = True,
    seed: int = 0,
    subset: bool | None = None,
) -> dict[str, dict]:
    """The figures of a class-conditional DDPM noise model ``net(x, t, y)`` with a null label
    (classifier-free guidance), as recorded for ``cfg-mnist``: accuracy, within-class
    diversity and FID of ``n`` guided DDIM-50 samples (balanced labels) at the guidance
    weights :data:`GUIDANCE_WEIGHTS` (Ho & Salimans' w; the course's scale s = 1 + w).
    Returns ``{"cfg-mnist": {...}}``."""
    from . import ddim, guidance

    reference, other = mnist_reference(n, seed, subset)
    floor = fid_against(other, reference)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    accuracy, diversity, fid_w = {}, {}, {}
    for w in GUIDANCE_WEIGHTS:
        samples, fid_w[w], seconds = _fid_of(
            lambda x, y, s=1 + w: ddim.sample_ddim(
                guidance.classifier_free_eps(net, y, s), x, schedule, min(50, schedule.T),
                clip_x0=True),
            n, reference, generator, device, bf16, labels)
        accuracy[w], diversity[w] = accuracy_and_diversity(samples, labels)
        print(f"CFG w = {w}: accuracy {accuracy[w]:.3f}, diversity {diversity[w]:.3f}, "
              f"FID {fid_w[w]:.2f} ({seconds:.0f} s)", flush=True)
    return {"cfg-mnist": {
        **_common(n, floor, bf16),
        "sampler": "DDIM, 50 steps, eta = 0",
        "guidance_weight_convention": "w of Ho & Salimans; the course's scale is s = 1 + w",
        "labels": "balanced, n / 10 per digit",
        "accuracy": accuracy,
        "within_class_diversity": diversity,
        "fid": fid_w,
    }}


FLOW_EULER_STEPS = (1, 2, 4, 8, 16)
"""Euler step counts at which ``flow-mnist`` is measured (and DDIM on ``ddpm-mnist`` at the same
numbers of network evaluations)."""

FLOW_HEUN_STEPS = 20
"""Heun steps of the flow-matching FID bar (2 network evaluations each)."""


def measure_flow_model(
    model: nn.Module,
    n: int = 1000,
    *,
    ddpm_model: nn.Module | None = None,
    schedule=None,
    device: torch.device | str = "cpu",
    bf16: bool = True,
    seed: int = 0,
    subset: bool | None = None,
) -> dict[str, dict]:
    """The figures of a flow-matching velocity ``model(x, t)`` (t = 0 noise, t = 1 data), as
    recorded for ``flow-mnist``: FID of ``n`` samples of the ODE by Heun's method with
    :data:`FLOW_HEUN_STEPS` steps and by Euler's method with each of :data:`FLOW_EULER_STEPS`
    steps, next to the floor; with ``ddpm_model`` (a DDPM noise model on ``schedule``), FID of
    deterministic DDIM with as many network evaluations as each Euler count, from the same
    noise. Returns ``{"flow-mnist": {...}}``."""
    from . import ddim
    from .flow_matching import sample_flow

    reference, other = mnist_reference(n, seed, subset)
    floor = fid_against(other, reference)
    common = dict(n=n, reference=reference, device=device, bf16=bf16)

    def seeded():
        return torch.Generator().manual_seed(seed)  # the same noise for every sampler

    _, fid_heun, seconds = _fid_of(
        lambda x, y: sample_flow(model, x, FLOW_HEUN_STEPS, "heun"), generator=seeded(), **common)
    print(f"flow, Heun {FLOW_HEUN_STEPS} steps: FID {fid_heun:.2f} (floor {floor:.2f}, "
          f"{seconds:.0f} s)", flush=True)
    euler, ddim_fid = {}, {}
    for steps in FLOW_EULER_STEPS:
        _, euler[steps], _ = _fid_of(lambda x, y, k=steps: sample_flow(model, x, k, "euler"),
                                     generator=seeded(), **common)
        line = f"flow, Euler {steps} steps: FID {euler[steps]:.2f}"
        if ddpm_model is not None:
            _, ddim_fid[steps], _ = _fid_of(
                lambda x, y, k=steps: ddim.sample_ddim(ddpm_model, x, schedule, k, clip_x0=True),
                generator=seeded(), **common)
            line += f"; DDIM (ddpm-mnist) {steps} steps: FID {ddim_fid[steps]:.2f}"
        print(line, flush=True)
    figures = {
        **_common(n, floor, bf16),
        "heun_steps": FLOW_HEUN_STEPS,
        "heun_evaluations": 2 * FLOW_HEUN_STEPS,
        "fid_heun": fid_heun,
        "fid_euler": euler,
        "samples_clipped_to": [-1, 1],
    }
    if ddpm_model is not None:
        figures["fid_ddim_same_evaluations"] = ddim_fid
        figures["ddim_model"] = "ddpm-mnist (eta = 0, x0 clipped)"
    return {"flow-mnist": figures}


def measure_noisy_classifier(
    net: nn.Module,
    model: nn.Module,
    schedule,
    n: int = 1000,
    *,
    device: torch.device | str = "cpu",
    bf16: bool = True,
    seed: int = 0,
    subset: bool | None = None,
) -> dict[str, dict]:
    """The figures of a noise-aware classifier ``net(x_t, t)``: its accuracy on every clean
    test digit (t = 0), and the LeNet accuracy and within-class diversity of ``n`` samples of
    the unconditional ``model(x, t)`` guided by it (DDIM-50, balanced labels) at the scales
    :data:`CLASSIFIER_SCALES`, with the best scale.

    Returns ``{"noisy-classifier-mnist": {...}}``."""
    from . import ddim, guidance
    from .data import load_mnist

    test = load_mnist("test", subset=subset)
    with torch.no_grad():
        t0 = torch.zeros(len(test), dtype=torch.long)
        logits = torch.cat([net(x.to(device), t.to(device)).cpu()
                            for x, t in zip(test.images.split(1000), t0.split(1000), strict=True)])
    clean = (logits.argmax(1) == test.labels).float().mean().item()
    print(f"noisy classifier: {clean:.4f} accurate on {len(test)} clean test digits", flush=True)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    accuracy, diversity = {}, {}
    for scale in CLASSIFIER_SCALES:
        samples = draw(
            lambda x, y, s=scale: ddim.sample_ddim(
                guidance.classifier_guided_eps(model, net, schedule, y, s), x, schedule,
                min(50, schedule.T), clip_x0=True),
            n, labels=labels, generator=generator, device=device, bf16=bf16)
        accuracy[scale], diversity[scale] = accuracy_and_diversity(samples, labels)
        print(f"classifier guidance s = {scale}: accuracy {accuracy[scale]:.3f}", flush=True)
    best = max(accuracy, key=accuracy.get)
    return {"noisy-classifier-mnist": {
        "clean_test_accuracy": clean, "clean_test_digits": len(test),
        "guided_model": "ddpm-mnist", "sampler": "DDIM, 50 steps, eta = 0", "n": n,
        "precision": "bf16 autocast" if bf16 else "float32",
        "guided_accuracy": accuracy, "within_class_diversity": diversity,
        "best_scale": best, "best_accuracy": accuracy[best]}}
