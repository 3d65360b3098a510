"""Visible checks for the exercise notebooks, one module per lecture (``lecture01``, ...).

Each check takes the student's function, compares it with an independent reference and
either prints a short confirmation or raises ``AssertionError`` saying what is wrong.
"""


def as_float64(value, what: str):
    """A torch or numpy answer (or a python number) as a float64 CPU tensor."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise AssertionError(
            f"{what} should be a torch tensor or numpy array, got {type(value).__name__}"
        ) from None


def close(a, b, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """Whether two answers agree in float64 after broadcasting."""
    import torch

    a, b = torch.broadcast_tensors(
        torch.as_tensor(a).to(torch.float64), torch.as_tensor(b).to(torch.float64)
    )
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def name_mistake(got, candidates: dict, default: str, rtol: float = 1e-5) -> str:
    """The first known mistake whose value matches ``got``, or ``default``."""
    for mistake, value in candidates.items():
        if close(got, value, rtol=rtol):
            return mistake
    return default


def checked_tensor(value, what: str, shape: tuple[int, ...]):
    """``value`` if it is a finite torch tensor of the given shape; else a helpful failure."""
    import torch

    assert isinstance(value, torch.Tensor), (
        f"{what} should be a torch tensor, got {type(value).__name__}"
    )
    assert tuple(value.shape) == shape, (
        f"{what} should have shape {shape}, got {tuple(value.shape)}"
    )
    assert torch.isfinite(value).all(), f"{what} contains NaN or inf"
    return value


def call_student(fn, *args, **kwargs):
    """Call the student's function; an unfilled stub fails with a clear ``AssertionError``."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        name = getattr(fn, "__name__", "the function")
        raise AssertionError(f"{name} is not implemented yet: replace the stub") from None


def seeded_normal(shape: tuple[int, ...], seed: int, dtype=None):
    """Standard normal draws from their own seeded generator (float64 by default)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype or torch.float64)


def fixed_mlp(dim: int, dtype, seed: int, **kwargs):
    """A small fixed :class:`~dlai_diffusion.nets.ScoreMLP` (16 wide, depth 2) net(x, t, ...),
    built from ``seed`` without touching the global RNG; ``kwargs`` go to ScoreMLP."""
    import torch

    from ..nets import ScoreMLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ScoreMLP(dim, hidden=16, depth=2, **kwargs).to(dtype)


def assert_trainable(loss, net, where: str, name: str) -> None:
    """The loss carries a gradient that back-propagates to every parameter of ``net``."""
    assert loss.requires_grad, (
        f"{where}: the loss carries no gradient: do not detach or call .item()"
    )
    loss.backward()
    assert all(p.grad is not None for p in net.parameters()), (
        f"{where}: back-propagating the loss did not reach every parameter of {name}"
    )
