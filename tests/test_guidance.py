"""Guidance against exact references: Bayes' rule for the scores of a noised Gaussian mixture,
the two ends of the classifier-free scale, samples that land in the requested component."""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion import ddim, ddpm, guidance, nets, sde, toy
from dlai_diffusion.checks import fixed_mlp
from dlai_diffusion.checks.lecture10 import check_mixture
from dlai_diffusion.schedules import Schedule

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mixture() -> toy.GaussianMixture:
    """Three overlapping components: p(k | x) is far from 0 or 1 between them."""
    return check_mixture()


def _nearest(mixture: toy.GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return (x[:, None] - mixture.means.to(x)).pow(2).sum(-1).argmin(1)


def _label_net(seed: int = 0) -> nets.ScoreMLP:
    return fixed_mlp(2, F64, seed, n_classes=3)


# --------------------------------------------------------------------------- Bayes' rule


def test_bayes_rule_for_scores_on_the_noised_mixture():
    """grad log q(x_t | k) = grad log q(x_t) + grad log p(k | x_t): the exact component score
    (closed form) against the mixture score plus an autograd gradient of the exact classifier."""
    mixture, schedule = _mixture(), Schedule.linear(100)
    classifier = guidance.exact_mixture_classifier(mixture, schedule)
    x = torch.randn(40, 2, generator=_gen(0), dtype=F64) * 2
    for step in (0, 30, 99):
        ab = schedule.alpha_bars[step].item()
        noised = mixture.diffuse(math.sqrt(ab), math.sqrt(1 - ab))
        t = torch.full((40,), step)
        for k in range(3):
            means = math.sqrt(ab) * mixture.means[k]
            variance = ab * mixture.stds[k] ** 2 + 1 - ab
            conditional = -(x - means) / variance
            grad = guidance.classifier_log_prob_grad(classifier, x, t, k)
            assert torch.allclose(noised.score(x) + grad, conditional, atol=1e-10)
            # the exact noise model says the same, with eps = -sqrt(1 - alpha_bar) score
            eps = guidance.exact_mixture_eps(mixture, schedule)(x, t, torch.full((40,), k))
            assert torch.allclose(eps, -math.sqrt(1 - ab) * conditional, atol=1e-10)


def test_exact_classifier_is_the_posterior_of_the_noised_mixture():
    mixture, schedule = _mixture(), Schedule.linear(50)
    classifier = guidance.exact_mixture_classifier(mixture, schedule)
    x = torch.randn(30, 2, generator=_gen(1), dtype=F64)
    t = torch.randint(0, 50, (30,), generator=_gen(2))
    log_post = classifier(x, t)
    for i in range(30):
        ab = schedule.alpha_bars[t[i]].item()
        noised = mixture.diffuse(math.sqrt(ab), math.sqrt(1 - ab))
        assert torch.allclose(log_post[i].exp(), noised.responsibilities(x[i]), atol=1e-12)


def test_classifier_guidance_at_scale_one_with_the_exact_classifier_is_the_conditional_model():
    mixture, schedule = _mixture(), Schedule.cosine(80)
    model = guidance.exact_mixture_eps(mixture, schedule)
    classifier = guidance.exact_mixture_classifier(mixture, schedule)
    x = torch.randn(24, 2, generator=_gen(3), dtype=F64)
    y = torch.arange(24) % 3
    for step in (0, 40, 79):
        t = torch.full((24,), step)
        guided = guidance.classifier_guided_eps(model, classifier, schedule, y, 1.0)(x, t)
        assert torch.allclose(guided, model(x, t, y), atol=1e-10)
        unguided = guidance.classifier_guided_eps(model, classifier, schedule, y, 0.0)(x, t)
        assert torch.equal(unguided, model(x, t))
        # scale s: the noise of p(x_t) p(y | x_t)^s, linear in s
        two = guidance.classifier_guided_eps(model, classifier, schedule, y, 2.0)(x, t)
        assert torch.allclose(two - model(x, t), 2 * (model(x, t, y) - model(x, t)), atol=1e-10)


# --------------------------------------------------------------------------- classifier-free


def test_classifier_free_scale_one_is_the_conditional_and_zero_the_unconditional_model():
    net = _label_net()
    x = torch.randn(10, 2, generator=_gen(4), dtype=F64)
    t = torch.randint(0, 100, (10,), generator=_gen(5))
    y = torch.arange(10) % 3
    with torch.no_grad():
        assert torch.equal(guidance.classifier_free_eps(net, y, 1.0)(x, t), net(x, t, y))
        assert torch.equal(guidance.classifier_free_eps(net, y, 0.0)(x, t), net(x, t, None))
        assert torch.equal(guidance.classifier_free_eps(net, None, 3.0)(x, t), net(x, t, None))
        cond, uncond = net(x, t, y), net(x, t, torch.full((10,), 3))
        for s in (0.5, 2.0, 7.5):
            guided = guidance.classifier_free_eps(net, y, s)(x, t)
            # our s is Ho & Salimans' 1 + w: (1 + w) eps_cond - w eps_uncond
            w = s - 1
            assert torch.allclose(guided, (1 + w) * cond - w * uncond, atol=1e-12)
        # one scale per sample, as used to sample a grid over scales in one batch
        scales = torch.linspace(0, 4, 10, dtype=F64)
        guided = guidance.classifier_free_eps(net, y, scales)(x, t)
        assert torch.allclose(guided, uncond + scales[:, None] * (cond - uncond), atol=1e-12)
        # an int label for the whole batch
        assert torch.equal(
            guidance.classifier_free_eps(net, 2, 1.0)(x, t), net(x, t, torch.full((10,), 2))
        )


def test_classifier_free_guidance_with_the_exact_model_sharpens_the_classes():
    """With the exact conditional and unconditional scores, CFG at scale s is the score of
    p(x_t) p(y | x_t)^s: larger s moves samples deeper into the requested component."""
    mixture, schedule = _mixture(), Schedule.linear(60)
    model = guidance.exact_mixture_eps(mixture, schedule)
    x_init = torch.randn(400, 2, generator=_gen(6), dtype=F64)
    fractions = []
    for s in (0.0, 1.0, 4.0):
        x = ddpm.sample_ddpm(
            guidance.classifier_free_eps(model, 2, s), x_init, schedule, generator=_gen(7)
        )
        fractions.append((_nearest(mixture, x) == 2).double().mean().item())
    assert fractions[0] < 0.4  # unconditional: the component's weight, 0.2, plus overlap
    assert fractions[1] > 0.9 and fractions[2] > 0.97
    assert fractions[2] >= fractions[1]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_moves_samples_to_the_requested_component(sampler):
    mixture, schedule = _mixture(), Schedule.linear(60)
    model = guidance.exact_mixture_eps(mixture, schedule)
    classifier = guidance.exact_mixture_classifier(mixture, schedule)
    x_init = torch.randn(300, 2, generator=_gen(8), dtype=F64)
    for k in range(3):
        eps_fn = guidance.classifier_guided_eps(model, classifier, schedule, k, 3.0)
        if sampler == "ddpm":
            x = ddpm.sample_ddpm(eps_fn, x_init, schedule, generator=_gen(9))
        else:
            x = ddim.sample_ddim(eps_fn, x_init, schedule, n_steps=30)
        assert torch.isfinite(x).all()
        fraction = (_nearest(mixture, x) == k).double().mean().item()
        assert fraction > 0.95, (k, fraction)


def test_guided_eps_runs_in_the_probability_flow_ode():
    mixture, schedule = _mixture(), Schedule.linear(100)
    model = guidance.exact_mixture_eps(mixture, schedule)
    eps_fn = guidance.classifier_free_eps(model, 1, 3.0)
    score_fn = sde.score_from_eps(eps_fn, schedule)
    x_init = torch.randn(200, 2, generator=_gen(10), dtype=F64)
    x = sde.sample_probability_flow(
        score_fn, sde.VPSDE.from_schedule(schedule), x_init, rtol=1e-4, atol=1e-4
    )
    assert (_nearest(mixture, x) == 1).double().mean().item() > 0.95


def test_guided_eps_with_a_network_runs_in_the_samplers():
    schedule = Schedule.linear(30)
    net = _label_net(1)
    x_init = torch.randn(8, 2, generator=_gen(11), dtype=F64)
    eps_fn = guidance.classifier_free_eps(net, torch.arange(8) % 3, 2.0)
    out = ddpm.sample_ddpm(eps_fn, x_init, schedule, generator=_gen(12))
    assert out.shape == (8, 2) and torch.isfinite(out).all()
    again = ddpm.sample_ddpm(eps_fn, x_init, schedule, generator=_gen(12))
    assert torch.equal(out, again)


# --------------------------------------------------------------------------- training


def test_label_dropout_rate_and_reproducibility():
    y = torch.arange(20_000) % 10
    dropped = guidance.drop_labels(y, 0.2, 10, _gen(13))
    is_null = dropped == 10
    rate = is_null.double().mean().item()
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20_000)
    assert torch.equal(dropped[~is_null], y[~is_null])  # the others are untouched
    assert torch.equal(dropped, guidance.drop_labels(y, 0.2, 10, _gen(13)))
    assert torch.equal(guidance.drop_labels(y, 0.0, 10, _gen(0)), y)
    assert (guidance.drop_labels(y, 1.0, 10, _gen(0)) == 10).all()


def test_conditional_simple_loss_is_the_simple_loss_of_the_dropped_labels():
    schedule = Schedule.linear(50)
    net = _label_net(2)
    x0 = torch.randn(64, 2, generator=_gen(14), dtype=F64)
    y = torch.arange(64) % 3
    loss = guidance.conditional_simple_loss(net, schedule, x0, y, _gen(15), p_uncond=0.3)
    g = _gen(15)
    labels = guidance.drop_labels(y, 0.3, 3, g)
    expected = ddpm.simple_loss(lambda x, t: net(x, t, labels), schedule, x0, g)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert net.label_embedding.weight.grad is not None
    per_sample = guidance.conditional_simple_loss(
        net, schedule, x0, y, _gen(15), p_uncond=0.3, reduction="none"
    )
    assert per_sample.shape == (64,) and torch.allclose(per_sample.mean(), loss)
    # Written out with given steps and noise: no dropout keeps y, full dropout uses the null label.
    t = torch.arange(64) % 50
    eps = torch.randn(64, 2, generator=_gen(16), dtype=F64)
    ab = schedule.alpha_bars.to(F64)[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    for p_uncond, labels in ((0.0, y), (1.0, torch.full((64,), 3))):
        by_hand = (eps - net(xt, t, labels)).pow(2).mean()
        got = guidance.conditional_simple_loss(
            net, schedule, x0, y, p_uncond=p_uncond, t=t, noise=eps
        )
        assert torch.allclose(got, by_hand), p_uncond


def test_noisy_classifier_learns_noisy_labels_quickly():
    """A few steps on two separable image classes lower the cross-entropy."""
    schedule = Schedule.linear(100)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = guidance.NoisyClassifier(2, channels=8, time_scale=10.0)
    g = _gen(16)
    y = torch.arange(32) % 2
    x0 = torch.where(y[:, None, None, None] == 1, 0.8, -0.8) * torch.ones(32, 1, 12, 12)
    optimiser = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    t = torch.randint(0, 30, (32,), generator=_gen(17))
    noise = torch.randn(x0.shape, generator=_gen(18))
    before = guidance.noisy_classifier_loss(classifier, schedule, x0, y, t=t, noise=noise).item()
    for _ in range(30):
        loss = guidance.noisy_classifier_loss(classifier, schedule, x0, y, g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = guidance.noisy_classifier_loss(classifier, schedule, x0, y, t=t, noise=noise).item()
    assert after < 0.5 * before
    logits = classifier(x0, t)
    assert logits.shape == (32, 2)
    grad = guidance.classifier_log_prob_grad(classifier, x0, t, y)
    assert grad.shape == x0.shape and torch.isfinite(grad).all()


def test_mean_pairwise_distance_against_a_direct_sum():
    f = torch.randn(12, 3, generator=_gen(19), dtype=F64)
    direct = sum((f[i] - f[j]).norm() for i in range(12) for j in range(i + 1, 12)) / 66
    assert guidance.mean_pairwise_distance(f) == pytest.approx(direct.item())
    labels = torch.tensor([0] * 5 + [1] * 7)
    per_group = [guidance.mean_pairwise_distance(f[:5]), guidance.mean_pairwise_distance(f[5:])]
    assert guidance.mean_pairwise_distance(f, labels) == pytest.approx(sum(per_group) / 2)


# --------------------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors():
    net = _label_net()
    schedule = Schedule.linear(30)
    y = torch.arange(4) % 3
    with pytest.raises(ValueError, match="p_uncond"):
        guidance.drop_labels(y, 1.5, 3)
    with pytest.raises(TypeError, match="y must hold integer"):
        guidance.drop_labels(y.double(), 0.1, 3)
    with pytest.raises(ValueError, match="null_label"):
        guidance.drop_labels(y, 0.1, -1)
    with pytest.raises(TypeError, match="scale"):
        guidance.classifier_free_eps(net, y, "strong")
    with pytest.raises(ValueError, match="scale"):
        guidance.classifier_free_eps(net, y, float("nan"))
    with pytest.raises(ValueError, match="null_label is needed"):
        guidance.classifier_free_eps(lambda x, t, y: x, y, 2.0)
    with pytest.raises(TypeError, match="model must be callable"):
        guidance.classifier_free_eps("net", y, 2.0)
    with pytest.raises(ValueError, match="y must"):
        guidance.classifier_free_eps(net, torch.tensor([-1, 0]), 2.0)
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="y must be an int or have shape"):
        guidance.classifier_free_eps(net, y, 2.0)(torch.randn(3, 2, dtype=F64), torch.zeros(3))
    mixture = _mixture()
    with pytest.raises(TypeError, match="mixture"):
        guidance.exact_mixture_classifier("mixture", schedule)
    with pytest.raises(TypeError, match="schedule"):
        guidance.exact_mixture_eps(mixture, "linear")
    classifier = guidance.exact_mixture_classifier(mixture, schedule)
    with pytest.raises(ValueError, match="y must lie in 0..2"):
        guidance.classifier_log_prob_grad(classifier, x, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="classifier must be callable"):
        guidance.classifier_guided_eps(net, None, schedule, 0, 1.0)
    with pytest.raises(TypeError, match="schedule"):
        guidance.classifier_guided_eps(net, classifier, None, 0, 1.0)
    with pytest.raises(ValueError, match="y must lie in 0..3"):
        guidance.exact_mixture_eps(mixture, schedule)(x, torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="features"):
        guidance.mean_pairwise_distance(torch.randn(1, 3))
    with pytest.raises(ValueError, match="n_classes"):
        guidance.NoisyClassifier(0)
    with pytest.raises(ValueError, match="x must have shape"):
        guidance.NoisyClassifier(3)(torch.randn(2, 3, 8, 8), torch.zeros(2))
