"""Energy-based models: Langevin on an energy, the replay buffer, the contrastive-divergence
loss, the training step inside the shared loop (with exact resume) and the CLI model."""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion import ebm, nets, runs
from dlai_diffusion.langevin import energy_to_score, langevin_step
from dlai_diffusion.train import CHECKPOINT_NAME, load_checkpoint, random_batches, train

Z = 4.0  # Monte-Carlo tolerance in standard errors
DTYPE = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=DTYPE)
PRECISION = torch.tensor([[2.0, -0.8], [-0.8, 1.5]], dtype=DTYPE)  # A, covariance A^-1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_energy(x: torch.Tensor) -> torch.Tensor:
    """E(x) = (x - m)^T A (x - m) / 2, the energy of N(m, A^-1)."""
    centred = x - MEAN
    return 0.5 * ((centred @ PRECISION) * centred).sum(-1)


def stationary_covariance(step_size: float, noise_scale: float) -> torch.Tensor:
    """x' = x - h A (x - m) + s z is stationary at N(m, C) with C = (I - hA) C (I - hA) + s^2 I,
    so C = s^2 (2 h A - h^2 A^2)^-1: the law of Eq. 19 at temperature T = s^2 / (2 h) with
    its O(h) discretisation bias (T = 1 when s = sqrt(2 h))."""
    h, a = step_size, PRECISION
    return noise_scale**2 * torch.linalg.inv(2 * h * a - h**2 * a @ a)


# --------------------------------------------------------------------------- Langevin


@pytest.mark.parametrize("noise_scale", [None, 0.1], ids=["eq19", "tempered"])
def test_langevin_on_a_gaussian_energy_reaches_its_mean_and_covariance(noise_scale):
    h, n = 0.05, 20_000
    s = math.sqrt(2 * h) if noise_scale is None else noise_scale
    x0 = 3 * torch.randn(n, 2, generator=gen(0), dtype=DTYPE)
    # slowest contraction 1 - h * 0.93 per step (smallest eigenvalue of A): 400 steps, e^-18
    x = ebm.energy_langevin(gaussian_energy, x0, h, 400, noise_scale=noise_scale, generator=gen(1))
    cov = stationary_covariance(h, s)
    assert ((x.mean(0) - MEAN).abs() < Z * (cov.diagonal() / n).sqrt()).all(), x.mean(0)
    # standard error of a sample covariance entry: sqrt((C_ii C_jj + C_ij^2) / n)
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < Z * se).all(), (torch.cov(x.T), cov)
    if noise_scale is None:  # Eq. 19 samples N(m, A^-1) up to its O(h) bias
        target = torch.linalg.inv(PRECISION)
        assert torch.linalg.matrix_norm(torch.cov(x.T) - target) < 0.1 * torch.linalg.matrix_norm(
            target
        )
    else:  # T = 0.01 / 0.1 = 0.1: ten times narrower than the untempered law
        assert torch.cov(x.T).trace() < 0.15 * torch.linalg.inv(PRECISION).trace()


def test_default_noise_is_the_notes_step_with_lambda_twice_the_step_size():
    x = torch.randn(6, 2, generator=gen(2), dtype=DTYPE)
    ours = ebm.energy_langevin_step(gaussian_energy, x, 0.03, generator=gen(3))
    notes = langevin_step(energy_to_score(gaussian_energy), x, 0.06, generator=gen(3))
    torch.testing.assert_close(ours, notes)
    z = torch.randn(6, 2, generator=gen(3), dtype=DTYPE)
    gradient = (x - MEAN) @ PRECISION
    tempered = ebm.energy_langevin_step(gaussian_energy, x, 0.03, noise_scale=0.2, generator=gen(3))
    torch.testing.assert_close(tempered, x - 0.03 * gradient + 0.2 * z)


def test_gradient_clipping_and_clamping():
    def steep(x):  # gradient (1000, -1000) everywhere
        return 1000.0 * (x[:, 0] - x[:, 1])

    x = torch.zeros(4, 2)
    clipped = ebm.energy_langevin_step(steep, x, 0.5, noise_scale=0.0, grad_clip=0.01)
    torch.testing.assert_close(clipped, torch.tensor([[-0.005, 0.005]]).expand(4, 2))
    free = ebm.energy_langevin_step(steep, x, 0.5, noise_scale=0.0)
    torch.testing.assert_close(free, torch.tensor([[-500.0, 500.0]]).expand(4, 2))
    kept = ebm.energy_langevin(steep, x, 0.5, 3, bounds=(-1.0, 2.0), generator=gen(4))
    assert kept.min() >= -1.0 and kept.max() <= 2.0
    assert (kept[:, 0] == -1.0).all() and (kept[:, 1] == 2.0).all()


def test_chains_repeat_with_a_seed_and_the_callback_sees_every_step():
    x0 = torch.randn(5, 2, generator=gen(5))
    seen = []
    first = ebm.energy_langevin(
        gaussian_energy_f32, x0, 0.1, 6, generator=gen(6), callback=seen.append
    )
    assert [d["i"] for d in seen] == list(range(6)) and torch.equal(seen[-1]["x"], first)
    assert torch.equal(
        first, ebm.energy_langevin(gaussian_energy_f32, x0, 0.1, 6, generator=gen(6))
    )
    assert not first.requires_grad and first.dtype == torch.float32


def gaussian_energy_f32(x):
    return gaussian_energy(x.double()).float()


# --------------------------------------------------------------------------- replay buffer


def test_buffer_reinitialises_at_the_requested_rate_with_uniform_noise():
    buffer = ebm.ReplayBuffer((2,), capacity=100, reinit_prob=0.05, bounds=(-1.0, 1.0))
    buffer.push(torch.full((100, 2), 5.0))  # every stored sample lies outside the bounds
    n = 20_000
    x = buffer.sample(n, gen(7))
    fresh = (x != 5.0).all(1)
    assert ((x == 5.0).all(1) | fresh).all()  # a start is a stored sample or wholly fresh
    rate, se = fresh.double().mean().item(), math.sqrt(0.05 * 0.95 / n)
    assert abs(rate - 0.05) < Z * se, rate
    noise = x[fresh]
    assert noise.min() >= -1 and noise.max() <= 1
    assert (noise.mean(0).abs() < Z * math.sqrt(1 / 3 / len(noise))).all()  # U(-1, 1): var 1/3
    assert (buffer.sample(500, gen(8)) == 5.0).float().mean() < 1  # not all kept
    assert (ebm.ReplayBuffer((2,), 10, reinit_prob=0.0).sample(50, gen(9)).abs() <= 1).all()


def test_buffer_draws_its_slots_uniformly_and_pushes_first_in_first_out():
    buffer = ebm.ReplayBuffer((1,), capacity=5, reinit_prob=0.0, bounds=(-1.0, 1.0))
    buffer.push(torch.tensor([[10.0], [11.0], [12.0]]))
    buffer.push(torch.tensor([[13.0], [14.0], [15.0], [16.0]]))  # wraps: 15, 16 replace 10, 11
    assert buffer.samples.flatten().tolist() == [15.0, 16.0, 12.0, 13.0, 14.0]
    assert int(buffer.n_pushed) == 7
    assert buffer.recent(3).flatten().tolist() == [14.0, 15.0, 16.0]
    buffer.push(torch.arange(20.0, 32.0)[:, None])  # more than the capacity: the last five stay
    assert sorted(buffer.samples.flatten().tolist()) == [27.0, 28.0, 29.0, 30.0, 31.0]
    n = 10_000
    counts = torch.bincount((buffer.sample(n, gen(10)).flatten() - 27).long(), minlength=5)
    expected = n / 5
    assert ((counts - expected).abs() < Z * math.sqrt(expected * 0.8)).all(), counts


def test_buffer_state_is_saved_and_follows_the_dtype():
    buffer = ebm.ReplayBuffer((1, 4, 4), capacity=8, generator=gen(11), dtype=DTYPE)
    assert buffer.samples.shape == (8, 1, 4, 4) and buffer.samples.dtype == DTYPE
    buffer.push(torch.ones(3, 1, 4, 4))
    copy = ebm.ReplayBuffer((1, 4, 4), capacity=8, dtype=DTYPE)
    copy.load_state_dict(buffer.state_dict())
    assert torch.equal(copy.samples, buffer.samples) and int(copy.n_pushed) == 3
    assert torch.equal(copy.sample(6, gen(12)), buffer.sample(6, gen(12)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffer_and_chain_live_on_the_gpu_with_a_cpu_generator():
    model = ebm.EBM(nets.EnergyMLP(2, hidden=16), ebm.ReplayBuffer((2,), 64)).cuda()
    cd = ebm.ContrastiveDivergence(n_steps=3, step_size=0.01, noise_scale=None, grad_clip=None)
    loss, _ = cd(model, torch.randn(8, 2, device="cuda"), gen(13))
    assert loss.is_cuda and model.buffer.samples.is_cuda and int(model.buffer.n_pushed) == 8


# --------------------------------------------------------------------------- the loss


def test_loss_and_regulariser_values():
    e_pos = torch.tensor([1.0, 2.0])
    e_neg = torch.tensor([3.0, -1.0, 4.0])
    contrast = 1.5 - 2.0
    regulariser = (1 + 4) / 2 + (9 + 1 + 16) / 3
    loss = ebm.contrastive_divergence_loss(e_pos, e_neg, alpha=0.3)
    assert loss.item() == pytest.approx(contrast + 0.3 * regulariser)
    assert ebm.contrastive_divergence_loss(e_pos, e_neg, 0.0).item() == pytest.approx(contrast)


def test_one_step_lowers_positive_and_raises_negative_energies():
    torch.manual_seed(0)
    energy = nets.EnergyMLP(2, hidden=16, depth=2)
    x_pos = torch.randn(64, 2, generator=gen(14)) * 0.3 + 1.0
    x_neg = torch.randn(64, 2, generator=gen(15)) * 0.3 - 1.0
    before_pos, before_neg = energy(x_pos).mean().item(), energy(x_neg).mean().item()
    loss = ebm.contrastive_divergence_loss(energy(x_pos), energy(x_neg), alpha=0.0)
    optimizer = torch.optim.SGD(energy.parameters(), lr=0.05)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert energy(x_pos).mean().item() < before_pos
        assert energy(x_neg).mean().item() > before_neg


# --------------------------------------------------------------------------- training step


def small_model(capacity: int = 128) -> ebm.EBM:
    torch.manual_seed(0)
    return ebm.EBM(
        nets.EnergyMLP(2, hidden=16, depth=2), ebm.ReplayBuffer((2,), capacity, 0.05, (-3, 3))
    )


CD = ebm.ContrastiveDivergence(
    n_steps=4, step_size=0.01, noise_scale=None, grad_clip=None, alpha=0.1
)


def test_the_step_pushes_its_negatives_and_returns_the_loss_of_both():
    model = small_model()
    batch = torch.randn(16, 2, generator=gen(16))
    g = gen(17)
    loss, logs = CD(model, batch, g)
    assert int(model.buffer.n_pushed) == 16
    negatives = model.buffer.samples[:16]
    with torch.no_grad():
        expected = ebm.contrastive_divergence_loss(model(batch), model(negatives), 0.1)
    torch.testing.assert_close(loss.detach(), expected)
    assert set(logs) == {"energy_pos", "energy_neg"}
    loss.backward()
    assert all(p.grad is not None for p in model.energy.parameters())
    assert (model.buffer.samples.abs() <= 3).all()


def test_training_resumes_exactly_with_its_buffer(tmp_path):
    data = random_batches(torch.randn(200, 2, generator=gen(18)), batch_size=16)
    straight = small_model()
    result = train(straight, CD, data, 12, lr=1e-3, generator=gen(19), progress=False)

    resumed = small_model()
    train(resumed, CD, data, 6, lr=1e-3, generator=gen(19), checkpoint_dir=tmp_path, progress=False)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert int(state["model"]["buffer.n_pushed"]) == 6 * 16  # the buffer is in the checkpoint
    fresh = small_model()
    again = train(
        fresh, CD, data, 12, lr=1e-3, generator=gen(0), checkpoint_dir=tmp_path, progress=False
    )
    assert again.losses == result.losses
    for name, value in straight.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_sampling_leaves_the_buffer_alone_and_can_continue_its_chains():
    model = small_model()
    model.buffer.push(torch.full((128, 2), 2.5))
    before = model.buffer.samples.clone()
    fresh = CD.sample(model, 300, n_steps=1, generator=gen(20))
    continued = CD.sample(model, 300, n_steps=1, generator=gen(20), from_buffer=True)
    assert fresh.shape == continued.shape == (300, 2)
    assert torch.equal(model.buffer.samples, before)
    # one small step from the stored point (2.5, 2.5) moves little; from noise on [-3, 3]^2 not
    assert ((continued - 2.5).abs() < 0.8).all()
    assert fresh.std(0).min() > 1.0


def test_bad_arguments_are_named():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="noise_scale"):
        ebm.energy_langevin_step(gaussian_energy_f32, x, 0.1, noise_scale=-1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        ebm.energy_langevin_step(gaussian_energy_f32, x, 0.1, grad_clip=0.0)
    with pytest.raises(ValueError, match="bounds"):
        ebm.energy_langevin_step(gaussian_energy_f32, x, 0.1, bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="step_size"):
        ebm.energy_langevin(gaussian_energy_f32, x, 0.0, 3)
    with pytest.raises(ValueError, match="reinit_prob"):
        ebm.ReplayBuffer((2,), reinit_prob=1.5)
    with pytest.raises(ValueError, match="capacity"):
        ebm.ReplayBuffer((2,), capacity=0)
    with pytest.raises(ValueError, match="x must have shape"):
        ebm.ReplayBuffer((2,), capacity=4).push(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="energy_neg"):
        ebm.contrastive_divergence_loss(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="alpha"):
        ebm.ContrastiveDivergence(alpha=-1.0)
    with pytest.raises(TypeError, match="ebm.EBM"):
        CD(nets.EnergyMLP(2), x)


# --------------------------------------------------------------------------- command line


def test_the_cli_model_trains_samples_and_resumes(tmp_path):
    assert "ebm" in runs.models()
    options = {"n_steps": 3, "sample_steps": 5, "capacity": 256}
    metrics = runs.train_run("ebm", tmp_path, steps=6, batch_size=32, options=options, n_eval=64)
    assert metrics["data"] == "8gaussians" and metrics["energy_distance"]["value"] > 0
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 6 and int(state["model"]["buffer.n_pushed"]) == 6 * 32
    runs.train_run("ebm", tmp_path, steps=8, batch_size=32, options=options, n_eval=64)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 8


def test_the_cli_model_on_mnist_uses_the_image_recipe(tmp_path):
    options = {"n_steps": 2, "sample_steps": 2, "channels": 4, "capacity": 64}
    metrics = runs.train_run(
        "ebm", tmp_path, data="mnist", steps=2, batch_size=8, options=options, n_eval=50
    )
    assert metrics["classifier_fid"] > 0 and 0 < metrics["classifier_confidence"] <= 1
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["model"]["buffer.samples"].shape == (64, 1, 28, 28)
    step = runs._ebm_step(runs.get_model("ebm").options, is_image=True)
    assert (step.step_size, step.noise_scale, step.grad_clip, step.alpha) == (
        10.0,
        0.005,
        0.01,
        1.0,
    )


def test_the_image_recipe_keeps_du_and_mordatchs_restart_rate():
    options = runs.get_model("ebm").options
    assert options["reinit_prob"] == "auto"
    assert runs._ebm_options(options, is_image=True)["reinit_prob"] == 0.05
    assert runs._ebm_options(options, is_image=False)["reinit_prob"] == 0.01


# --------------------------------------------------------------------------- the 2D step


def _thinnest_feature(name: str) -> float:
    """The width of the thinnest feature of a 2D toy: its noise, or the modes' std."""
    import inspect

    from dlai_diffusion import toy

    if name == "8gaussians":
        return inspect.signature(toy.eight_gaussians).parameters["std"].default
    return inspect.signature(toy.DATASETS[name]).parameters["noise"].default


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "8gaussians"])
def test_the_2d_default_step_resolves_the_thinnest_feature_of_the_toys(name):
    """The untempered chain's noise sets a resolution sqrt(2 step_size): step <= sigma^2 / 2."""
    auto = runs._EBM_AUTO["2d"]
    sigma = _thinnest_feature(name)
    assert auto["noise_scale"] is None  # untempered: noise sqrt(2 step_size)
    assert math.sqrt(2 * auto["step_size"]) < sigma, (name, sigma, auto["step_size"])
    assert auto["step_size"] <= sigma**2 / 2
    assert runs.get_model("ebm").options["step_size"] == "auto"  # the command line's default


class _Well(torch.nn.Module):
    """E(u) = theta u^2 / 2 across a thin feature, theta = exp(log_theta) > 0 learned."""

    def __init__(self, theta: float):
        super().__init__()
        self.log_theta = torch.nn.Parameter(torch.tensor(math.log(theta), dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.log_theta.exp() * x[:, 0] ** 2


def _train_a_thin_well(n_steps: int, step_size: float, sigma: float = 0.05, steps: int = 120):
    """Contrastive divergence on data N(0, sigma^2) with the learned curvature theta of _Well,
    started at the exact theta = 1 / sigma^2: returns step_size * theta and the negatives'
    std after each training step."""
    torch.manual_seed(0)
    model = ebm.EBM(
        _Well(1 / sigma**2), ebm.ReplayBuffer((1,), 2048, 0.0, (-3.0, 3.0), dtype=DTYPE)
    )
    cd = ebm.ContrastiveDivergence(
        n_steps=n_steps, step_size=step_size, noise_scale=None, grad_clip=None, alpha=0.01
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    g = gen(4)
    margins, spreads = [], []
    for _ in range(steps):
        data = sigma * torch.randn(512, 1, generator=g, dtype=DTYPE)
        loss, _ = cd(model, data, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        margins.append(step_size * model.energy.log_theta.exp().item())
        spreads.append(model.buffer.recent(512).std().item())
    return margins, spreads


def test_the_default_chain_holds_a_thin_feature_where_the_former_step_runs_away():
    """On a well as thin as moons' noise (sigma = 0.05) the former 2D step 0.004 cannot make
    negatives that thin (sqrt(2 * 0.004) = 0.089): contrastive divergence sharpens the well
    up to the chain's stability limit step * theta = 2 (where the regulariser holds this
    one-parameter energy), and the negatives stay several times wider than the data. The
    default step settles with step * theta < 1 and negatives as wide as the data."""
    sigma = 0.05
    auto = runs._EBM_AUTO["2d"]
    margins, spreads = _train_a_thin_well(auto["n_steps"], auto["step_size"], sigma)
    assert max(margins) < 1 and margins[-1] < 1, margins[-10:]
    assert all(0.8 * sigma < s < 1.25 * sigma for s in spreads[-40:]), spreads[-40:]
    margins, spreads = _train_a_thin_well(20, 0.004, sigma)
    assert max(margins) > 1.9 and min(margins[-40:]) > 1.8, margins[-40:]
    assert min(spreads[-40:]) > 2 * sigma, spreads[-40:]
