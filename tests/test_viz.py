"""Tests of dlai_diffusion.viz: each plot runs headless (Agg, set in conftest.py) and draws
what it claims, where it claims."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.animation import FuncAnimation
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver

from dlai_diffusion import toy, viz


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def blob(center=(2.0, -1.0), std=0.3):
    """A Gaussian with an exact log-density and score, away from the origin on purpose."""
    return toy.GaussianMixture(torch.tensor([center]), std)


def test_grid_2d_layout():
    xx, yy, points = viz.grid_2d(((-1, 3), (0, 2)), n=5)
    assert xx.shape == yy.shape == (5, 5) and points.shape == (25, 2)
    assert torch.equal(xx[0], torch.linspace(-1, 3, 5)) and torch.equal(
        yy[:, 0], torch.linspace(0, 2, 5)
    )
    assert torch.equal(points.reshape(5, 5, 2)[..., 0], xx) and torch.equal(
        points.reshape(5, 5, 2)[..., 1], yy
    )
    _, _, square = viz.grid_2d(2.0, n=3, dtype=torch.float64)
    assert square.dtype == torch.float64 and square.min() == -2 and square.max() == 2
    with pytest.raises(ValueError, match="lo < hi"):
        viz.grid_2d(((1, 0), (0, 1)))
    with pytest.raises(TypeError, match="bounds must be"):
        viz.grid_2d("big")
    with pytest.raises(ValueError, match="n must be"):
        viz.grid_2d(1.0, n=1)


def test_image_grid_places_and_scales_images():
    images = -torch.ones(10, 1, 28, 28)
    images[5] = 1.0  # the sixth image is white: row 1, column 1 with nrow=4
    grid = viz.image_grid(images, nrow=4, padding=2)
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2)
    assert grid[32:60, 32:60].min() == 1.0 and grid[2:30, 2:30].max() == 0.0
    assert grid[0].min() == 1.0  # padding
    assert grid[62:90, 62:90].min() == 1.0  # two empty cells at the end are padding too
    rgb = viz.image_grid(torch.zeros(3, 3, 8, 8), nrow=8)
    assert rgb.shape == (12, 32, 3) and np.allclose(rgb[2:10, 2:10], 0.5)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        viz.image_grid(torch.zeros(2, 2, 8, 8))


def test_show_images_draws_one_grid():
    fig = viz.show_images(torch.rand(16, 1, 28, 28) * 2 - 1, nrow=4, title="digits")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    (image,) = ax.get_images()
    assert image.get_array().shape == (4 * 30 + 2, 4 * 30 + 2) and ax.get_title() == "digits"
    _, existing = plt.subplots()
    assert viz.show_images(torch.zeros(2, 1, 28, 28), ax=existing) is existing.figure


def test_plot_samples_against_reference():
    samples, reference = torch.randn(50, 2), torch.randn(200, 2, requires_grad=True)
    fig = viz.plot_samples(samples, reference=reference, bounds=3, title="t")
    ax = fig.axes[0]
    ref_points, sample_points = ax.collections
    assert len(ref_points.get_offsets()) == 200 and len(sample_points.get_offsets()) == 50
    assert np.allclose(sample_points.get_offsets(), samples.numpy())
    assert ax.get_xlim() == (-3, 3) and ax.get_legend() is not None
    with pytest.raises(ValueError, match=r"samples must have shape \(N, 2\)"):
        viz.plot_samples(torch.zeros(5, 3))


def test_plot_density_is_normalised_and_oriented():
    mixture = blob()
    bounds = ((-1.0, 4.0), (-3.0, 2.0))
    fig = viz.plot_density(mixture.log_prob, bounds, n=101)
    (image,) = fig.axes[0].get_images()
    density = image.get_array()
    cell = (5 / 100) ** 2
    assert density.sum() * cell == pytest.approx(1.0, rel=1e-6)
    # Peak at the mean (2, -1): row indexes y (origin lower), column indexes x.
    row, col = np.unravel_index(np.argmax(density), density.shape)
    assert (-1.0 + col * 0.05, -3.0 + row * 0.05) == pytest.approx((2.0, -1.0), abs=0.03)
    # And the peak value of N(m, 0.3^2 I) is 1 / (2 pi 0.09), close on a fine grid.
    assert density.max() == pytest.approx(1 / (2 * np.pi * 0.09), rel=0.02)
    assert image.get_extent() == [-1.0, 4.0, -3.0, 2.0]


def test_plot_density_energy_flag_and_views():
    mixture = blob()
    log_p = viz.plot_density(mixture.log_prob, 3, n=40, show="log_density").axes[0].get_images()[0]
    energy = viz.plot_density(mixture.energy, 3, n=40, energy=True, show="energy", colorbar=True)
    e_image = energy.axes[0].get_images()[0].get_array()
    assert log_p.get_array().max() == 0.0
    # With energy=True, "energy" shows E itself; as a density view it equals the log_prob one.
    _, _, points = viz.grid_2d(3, 40)
    assert np.allclose(e_image, mixture.energy(points).reshape(40, 40).numpy(), atol=1e-5)
    from_energy = viz.plot_density(mixture.energy, 3, n=40, energy=True).axes[0].get_images()[0]
    from_log_p = viz.plot_density(mixture.log_prob, 3, n=40).axes[0].get_images()[0]
    assert np.allclose(from_energy.get_array(), from_log_p.get_array(), rtol=1e-5)
    assert len(energy.axes) == 2  # the colour bar
    with pytest.raises(ValueError, match="show must be one of"):
        viz.plot_density(mixture.log_prob, show="probability")


def test_plot_density_evaluates_a_module_on_its_dtype_and_uses_its_bounds():
    class Quadratic(torch.nn.Module):
        bounds = ((-2.0, 2.0), (-1.0, 1.0))

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, x):
            assert x.dtype == torch.float64
            return self.scale * x.square().sum(-1)

    fig = viz.plot_density(Quadratic(), n=20, energy=True)
    assert fig.axes[0].get_images()[0].get_extent() == [-2.0, 2.0, -1.0, 1.0]


def test_plot_score_field_draws_the_score_at_the_grid_points():
    mixture = blob()
    fig = viz.plot_score_field(mixture.score, bounds=3, n=7, background=mixture.log_prob)
    ax = fig.axes[0]
    (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert len(ax.get_images()) == 1  # the background density
    _, _, points = viz.grid_2d(3, 7)
    expected = mixture.score(points).numpy()
    assert np.allclose(quiver.U.ravel(), expected[:, 0], rtol=1e-5)
    assert np.allclose(quiver.V.ravel(), expected[:, 1], rtol=1e-5)
    assert np.allclose(quiver.get_offsets(), points.numpy())
    unit = viz.plot_score_field(mixture.score, 3, n=5, normalize=True, color="k")
    (arrows,) = [c for c in unit.axes[0].collections if isinstance(c, Quiver)]
    assert np.allclose(np.hypot(arrows.U, arrows.V), 1.0)


def test_plot_score_field_works_with_autograd_scores():
    def score(x):  # grad log p of a standard Gaussian, through autograd: -x
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(-0.5 * x.square().sum(), x)
        return grad

    fig = viz.plot_score_field(score, 2, n=5)
    (quiver,) = [c for c in fig.axes[0].collections if isinstance(c, Quiver)]
    assert np.allclose(quiver.U.ravel(), -viz.grid_2d(2, 5)[2][:, 0].numpy())
    with pytest.raises(ValueError, match="shape"):
        viz.plot_score_field(lambda x: x[:, :1], 2, n=5)


def test_plot_chains_draws_one_line_per_chain():
    path = torch.cumsum(torch.randn(30, 12, 2) * 0.1, dim=0)
    fig = viz.plot_chains(path, n_chains=5, reference=torch.randn(100, 2))
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 5
    assert np.allclose(ax.get_lines()[2].get_xydata(), path[:, 2].numpy())
    assert len(ax.collections) == 3  # reference, starts, ends
    as_list = viz.plot_chains(list(path), n_chains=50)
    assert len(as_list.axes[0].get_lines()) == 12
    with pytest.raises(ValueError, match=r"\(T, N, 2\)"):
        viz.plot_chains(torch.zeros(5, 2))


def test_animate_chain_and_html():
    path = torch.linspace(0, 1, 6)[:, None, None] * torch.ones(1, 8, 2)
    anim = viz.animate_chain(path, reference=torch.zeros(4, 2), max_frames=4)
    assert isinstance(anim, FuncAnimation)
    fig = anim._fig
    cloud = fig.axes[0].collections[-1]
    html = viz.to_html(anim)
    assert "<script" in html.data and "anim" in html.data
    assert np.allclose(cloud.get_offsets(), path[-1].numpy())  # the last frame drawn last
    assert fig.axes[0].get_title() == "step 5 / 5"
    assert not plt.fignum_exists(fig.number)  # closed, so notebooks show no extra still
    with pytest.raises(TypeError, match="FuncAnimation"):
        viz.to_html(fig)


def test_plot_losses_smooths_and_labels():
    losses = [1.0] * 50
    fig = viz.plot_losses(losses, smooth=0.9)
    raw, smoothed = fig.axes[0].get_lines()
    assert np.allclose(smoothed.get_ydata(), 1.0)  # bias-corrected EMA of a constant
    assert fig.axes[0].get_yscale() == "log"
    history = [
        {"loss": 2.0 / (i + 1), "grad_norm": torch.tensor(1.0), "note": "x"} for i in range(20)
    ]
    fig = viz.plot_losses(history, smooth=0.0)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "grad_norm"]
    assert np.allclose(ax.get_lines()[0].get_ydata(), [2.0 / (i + 1) for i in range(20)])
    signed = viz.plot_losses({"a": torch.tensor([1.0, -1.0, 0.5])})
    assert signed.axes[0].get_yscale() == "linear" and len(signed.axes[0].get_lines()) == 2
    with pytest.raises(ValueError, match="smooth"):
        viz.plot_losses(losses, smooth=1.0)
    with pytest.raises(ValueError, match="at least one value"):
        viz.plot_losses([])
