"""Plots for the course: image grids, sample clouds, densities, score fields, chains, losses.

Conventions shared by every function here:

* Each plotting function draws on ``ax`` when given one, else on a new figure, and returns the
  :class:`~matplotlib.figure.Figure` (``fig.axes[0]`` is the axes); nothing calls
  ``plt.show()``, so everything runs headless (the tests use the Agg backend).
* Tensors may live on any device and require grad; they are detached and copied to the CPU.
* 2D regions are ``bounds``: a number L for the square [-L, L]^2, or ((x_lo, x_hi), (y_lo, y_hi))
  as in :mod:`dlai_diffusion.energy`. :func:`grid_2d` turns them into evaluation points.
* Functions plotted on a grid take a (n * n, 2) tensor of points and return n * n values (a
  log-density or energy) or (n * n, 2) vectors (a score). A ``torch.nn.Module`` gets the points
  on the device and in the dtype of its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "animate_chain",
    "grid_2d",
    "image_grid",
    "plot_chains",
    "plot_density",
    "plot_losses",
    "plot_samples",
    "plot_score_field",
    "show_images",
    "to_html",
]

DEFAULT_BOUNDS = 3.0
REFERENCE_STYLE = {"color": "0.65", "s": 4, "alpha": 0.5, "linewidths": 0}
SAMPLE_STYLE = {"color": "C0", "s": 4, "alpha": 0.7, "linewidths": 0}

# --------------------------------------------------------------------------- helpers


def _numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(x)}") from None


def _points_2d(x: object, name: str) -> np.ndarray:
    x = _numpy(x, name)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {x.shape}")
    return x


def _box(bounds: object) -> tuple[tuple[float, float], tuple[float, float]]:
    """``bounds`` as ((x_lo, x_hi), (y_lo, y_hi)); a number L means [-L, L]^2."""
    if isinstance(bounds, int | float) and not isinstance(bounds, bool):
        bounds = ((-bounds, bounds), (-bounds, bounds))
    try:
        (x_lo, x_hi), (y_lo, y_hi) = ((float(lo), float(hi)) for lo, hi in bounds)
    except (TypeError, ValueError):
        raise TypeError(
            f"bounds must be a number L or ((x_lo, x_hi), (y_lo, y_hi)), got {bounds!r}"
        ) from None
    if not (x_lo < x_hi and y_lo < y_hi and math.isfinite(x_hi - x_lo + y_hi - y_lo)):
        raise ValueError(f"bounds must be finite with lo < hi on both axes, got {bounds!r}")
    return (x_lo, x_hi), (y_lo, y_hi)


def _axes(ax: Axes | None, figsize: tuple[float, float] = (4.5, 4.5)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    elif not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _frame(ax: Axes, bounds: object | None, title: str | None) -> None:
    if bounds is not None:
        (x_lo, x_hi), (y_lo, y_hi) = _box(bounds)
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)


def _evaluate(fn: Callable[[Tensor], Tensor], points: Tensor, name: str) -> np.ndarray:
    """fn(points) as a float64 array; a Module gets points on its parameters' device/dtype."""
    if not callable(fn):
        raise TypeError(f"{name} must be a callable taking (M, 2) points, got {fn!r}")
    if isinstance(fn, torch.nn.Module):
        parameter = next(fn.parameters(), None)
        if parameter is not None:
            points = points.to(parameter.device, parameter.dtype)
    return _numpy(fn(points), f"the values of {name}")


def grid_2d(
    bounds: object = DEFAULT_BOUNDS,
    n: int = 100,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """A regular n x n grid on a 2D box, for evaluating energies, densities and scores.

    Returns ``(xx, yy, points)``: ``xx`` and ``yy`` of shape (n, n) (``meshgrid`` with
    ``indexing="xy"``: rows run along y, columns along x, endpoints included) and ``points``
    of shape (n * n, 2). Values ``f(points).reshape(n, n)`` line up with ``xx`` and ``yy`` for
    ``contour``/``pcolormesh``, and with ``imshow(origin="lower")``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    (x_lo, x_hi), (y_lo, y_hi) = _box(bounds)
    xs = torch.linspace(x_lo, x_hi, n, device=device, dtype=dtype)
    ys = torch.linspace(y_lo, y_hi, n, device=device, dtype=dtype)
    xx, yy = torch.meshgrid(xs, ys, indexing="xy")
    return xx, yy, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


# --------------------------------------------------------------------------- images


def image_grid(
    images: object, nrow: int = 8, padding: int = 2, pad_value: float = 1.0
) -> np.ndarray:
    """Tile images (N, C, H, W) with values in [-1, 1] into one array with values in [0, 1].

    ``nrow`` images per row (as torchvision's ``make_grid``), ``padding`` pixels of
    ``pad_value`` (in [0, 1]; default white) around each. Returns (rows, cols) for one channel,
    (rows, cols, 3) for three. (N, H, W) is read as one channel.
    """
    x = _numpy(images, "images")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3, got {x.shape}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    n, c, h, w = x.shape
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    grid = np.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for k, image in enumerate(np.clip((x + 1) / 2, 0, 1)):
        top, left = padding + (k // cols) * (h + padding), padding + (k % cols) * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def show_images(
    images: object,
    nrow: int = 8,
    ax: Axes | None = None,
    title: str | None = None,
    padding: int = 2,
) -> Figure:
    """Show images (N, C, H, W) in [-1, 1] as one grid of ``nrow`` columns (gray for C = 1)."""
    grid = image_grid(images, nrow=nrow, padding=padding)
    rows, cols = grid.shape[:2]
    scale = 6.0 / max(rows, cols)  # the longer side 6 inches
    ax = _axes(ax, figsize=(max(cols * scale, 1.0), max(rows * scale, 1.0)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


# --------------------------------------------------------------------------- 2D pictures


def plot_samples(
    samples: object,
    reference: object | None = None,
    ax: Axes | None = None,
    bounds: object | None = None,
    title: str | None = None,
    label: str = "samples",
    reference_label: str = "data",
) -> Figure:
    """Scatter 2D samples (N, 2), over reference points (the truth) in gray when given."""
    ax = _axes(ax)
    if reference is not None:
        ref = _points_2d(reference, "reference")
        ax.scatter(ref[:, 0], ref[:, 1], label=reference_label, **REFERENCE_STYLE)
    points = _points_2d(samples, "samples")
    ax.scatter(points[:, 0], points[:, 1], label=label, **SAMPLE_STYLE)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=3, fontsize="small")
    _frame(ax, bounds, title)
    return ax.figure


SHOW = ("density", "log_density", "energy")


def plot_density(
    fn: Callable[[Tensor], Tensor],
    bounds: object | None = None,
    n: int = 150,
    *,
    energy: bool = False,
    show: str = "density",
    ax: Axes | None = None,
    title: str | None = None,
    colorbar: bool = False,
    cmap: str = "viridis",
    **imshow_kwargs,
) -> Figure:
    """Heatmap of a 2D density or energy on a grid.

    Args:
        fn: maps points (M, 2) to M values: a log-density log p(x) (up to a constant), or an
            energy E(x) when ``energy=True``, read as log p = -E + const (notes Eq. 1).
        bounds: the box to draw (see the module docstring); default ``fn.bounds`` when ``fn``
            has them (an :class:`dlai_diffusion.energy.Energy`), else [-3, 3]^2.
        n: grid points per axis.
        show: ``"density"`` (p normalised on the grid to integrate to 1), ``"log_density"``
            (log p, shifted so its maximum is 0) or ``"energy"`` (E = -log p; equal to the
            energy itself when ``energy=True``).
        colorbar: add a colour bar. Other keywords go to ``ax.imshow`` (e.g. ``vmax``).
    """
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}, got {show!r}")
    bounds = getattr(fn, "bounds", DEFAULT_BOUNDS) if bounds is None else bounds
    (x_lo, x_hi), (y_lo, y_hi) = _box(bounds)
    _, _, points = grid_2d(bounds, n)
    with torch.no_grad():
        values = _evaluate(fn, points, "fn").reshape(n, n)
    log_p = -values if energy else values
    if show == "energy":
        image = -log_p
    elif show == "log_density":
        image = log_p - log_p.max()
    else:
        cell = (x_hi - x_lo) * (y_hi - y_lo) / (n - 1) ** 2
        p = np.exp(log_p - log_p.max())
        image = p / (p.sum() * cell)
    ax = _axes(ax)
    shown = ax.imshow(
        image, origin="lower", extent=(x_lo, x_hi, y_lo, y_hi), cmap=cmap, **imshow_kwargs
    )
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, shrink=0.8, label=show.replace("_", " "))
    _frame(ax, bounds, title)
    return ax.figure


def plot_score_field(
    score_fn: Callable[[Tensor], Tensor],
    bounds: object = DEFAULT_BOUNDS,
    n: int = 20,
    ax: Axes | None = None,
    background: Callable[[Tensor], Tensor] | None = None,
    normalize: bool = False,
    title: str | None = None,
    color: str = "white",
    **quiver_kwargs,
) -> Figure:
    """Quiver plot of a 2D vector field, typically a score s(x) = grad log p(x) (notes Eq. 5).

    Args:
        score_fn: maps points (M, 2) to vectors (M, 2). Called with gradients enabled, so a
            score computed by autograd from an energy works.
        n: arrows per axis.
        background: optional log-density drawn underneath with :func:`plot_density`.
        normalize: draw unit arrows (directions only); scores far from the data are long.
        color: arrow colour (white reads well on a density; use "k" without one).
        Other keywords go to ``ax.quiver``.
    """
    ax = _axes(ax)
    if background is not None:
        plot_density(background, bounds, ax=ax)
    xx, yy, points = grid_2d(bounds, n)
    vectors = _evaluate(score_fn, points, "score_fn")
    if vectors.shape != (n * n, 2):
        raise ValueError(f"score_fn must return vectors of shape (M, 2), got {vectors.shape}")
    if normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    ax.quiver(
        xx.numpy(),
        yy.numpy(),
        vectors[:, 0].reshape(n, n),
        vectors[:, 1].reshape(n, n),
        color=color,
        **quiver_kwargs,
    )
    _frame(ax, bounds, title)
    return ax.figure


def _trajectory(trajectory: object) -> np.ndarray:
    if isinstance(trajectory, Sequence) and trajectory and isinstance(trajectory[0], Tensor):
        trajectory = torch.stack([t.detach().cpu() for t in trajectory])
    path = _numpy(trajectory, "trajectory")
    if path.ndim != 3 or path.shape[2] != 2 or path.shape[0] < 1:
        raise ValueError(
            f"trajectory must have shape (T, N, 2) (or be T tensors (N, 2)), got {path.shape}"
        )
    return path


def plot_chains(
    trajectory: object,
    n_chains: int = 20,
    reference: object | None = None,
    ax: Axes | None = None,
    bounds: object | None = None,
    title: str | None = None,
) -> Figure:
    """Paths of 2D chains (Langevin, reverse diffusion...) over time.

    ``trajectory`` has shape (T, N, 2) (or is a list of T tensors (N, 2)). The first
    ``n_chains`` chains are drawn as lines from a circle (start) to a dot (end), over
    ``reference`` points in gray when given.
    """
    path = _trajectory(trajectory)
    ax = _axes(ax)
    if reference is not None:
        ref = _points_2d(reference, "reference")
        ax.scatter(ref[:, 0], ref[:, 1], **REFERENCE_STYLE)
    shown = path[:, : max(1, n_chains)]
    for k in range(shown.shape[1]):
        ax.plot(shown[:, k, 0], shown[:, k, 1], color=f"C{k % 10}", lw=0.8, alpha=0.8)
    ax.scatter(shown[0, :, 0], shown[0, :, 1], facecolors="none", edgecolors="k", s=16, lw=0.6)
    ax.scatter(shown[-1, :, 0], shown[-1, :, 1], color="k", s=8)
    _frame(ax, bounds, title)
    return ax.figure


def animate_chain(
    trajectory: object,
    reference: object | None = None,
    bounds: object | None = None,
    max_frames: int = 60,
    interval: int = 80,
    step_name: str = "step",
) -> FuncAnimation:
    """Animate 2D sample clouds moving along a trajectory (T, N, 2).

    At most ``max_frames`` evenly spaced steps (first and last included) are shown,
    ``interval`` ms apart. Returns a :class:`~matplotlib.animation.FuncAnimation`; in a
    notebook display it with ``to_html(anim)``. Default bounds enclose the whole trajectory;
    the title reads "<step_name> t / T-1".
    """
    path = _trajectory(trajectory)
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    steps = np.unique(np.linspace(0, path.shape[0] - 1, min(max_frames, path.shape[0])).round())
    if bounds is None:
        lo, hi = path.min(axis=(0, 1)), path.max(axis=(0, 1))
        margin = 0.05 * (hi - lo).max() + 1e-6
        bounds = ((lo[0] - margin, hi[0] + margin), (lo[1] - margin, hi[1] + margin))
    fig = plot_samples(path[0], reference=reference, bounds=bounds)
    ax = fig.axes[0]
    cloud = ax.collections[-1]

    def draw(frame: int):
        step = int(steps[frame])
        cloud.set_offsets(path[step])
        ax.set_title(f"{step_name} {step} / {path.shape[0] - 1}")
        return (cloud,)

    draw(0)
    return FuncAnimation(fig, draw, frames=len(steps), interval=interval, blit=False)


def to_html(anim: FuncAnimation, close: bool = True):
    """An animation as an interactive JavaScript player (``IPython.display.HTML``).

    The last expression of a notebook cell, ``to_html(animate_chain(path))``, shows it.
    ``close`` closes the animation's figure so the notebook does not also show a still.
    """
    from IPython.display import HTML

    if not isinstance(anim, FuncAnimation):
        raise TypeError(f"anim must be a matplotlib FuncAnimation, got {type(anim).__name__}")
    html = anim.to_jshtml()
    if close:
        plt.close(anim._fig)
    return HTML(html)


# --------------------------------------------------------------------------- training


def _curves(history: object) -> dict[str, np.ndarray]:
    if isinstance(history, Mapping):
        items = history.items()
    elif isinstance(history, Sequence) and history and isinstance(history[0], Mapping):
        keys = [k for k in history[0] if isinstance(history[0][k], int | float | Tensor)]
        items = ((k, [row[k] for row in history]) for k in keys)
    else:
        items = (("loss", history),)
    curves = {}
    for name, values in items:
        if isinstance(values, Sequence) and values and isinstance(values[0], Tensor):
            values = [float(v) for v in values]
        curve = _numpy(values, f"history[{name!r}]").reshape(-1)
        if curve.size:
            curves[str(name)] = curve
    if not curves:
        raise ValueError("history must hold at least one value")
    return curves


def _smoothed(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out, average = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        average = weight * average + (1 - weight) * v
        out[i] = average / (1 - weight ** (i + 1))
    return out


def plot_losses(
    history: object,
    smooth: float = 0.9,
    ax: Axes | None = None,
    log: bool | None = None,
    title: str | None = None,
    xlabel: str = "step",
) -> Figure:
    """Training curves: one value per step, raw (faint) and smoothed.

    Args:
        history: a sequence of numbers, a dict of name -> sequence, or a sequence of dicts (one
            per step, e.g. what a training loop yields; their numeric entries are plotted).
        smooth: weight in [0, 1) of the exponential moving average; 0 draws the raw curve only.
        log: log-scale y axis; default when every value is positive.
    """
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth!r}")
    curves = _curves(history)
    ax = _axes(ax, figsize=(6, 3.5))
    for k, (name, values) in enumerate(curves.items()):
        color = f"C{k % 10}"
        if smooth > 0:
            ax.plot(values, color=color, alpha=0.25, lw=0.8)
            ax.plot(_smoothed(values, smooth), color=color, label=name)
        else:
            ax.plot(values, color=color, label=name)
    if log is None:
        log = all((v > 0).all() for v in curves.values())
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    if len(curves) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax.figure
