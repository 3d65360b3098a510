"""Visible checks for the exercise notebooks, one module per lecture (``lecture01``, ...).

Each check takes the student's function, compares it with an independent reference and
either prints a short confirmation or raises ``AssertionError`` saying what is wrong.
"""


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
