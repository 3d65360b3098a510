"""Visible checks for the exercise notebooks, one module per lecture (``lecture01``, ...).

Each check takes the student's function, compares it with an independent reference and
either prints a short confirmation or raises ``AssertionError`` saying what is wrong.
"""


def call_student(fn, *args, **kwargs):
    """Call the student's function; an unfilled stub fails with a clear ``AssertionError``."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        name = getattr(fn, "__name__", "the function")
        raise AssertionError(f"{name} is not implemented yet: replace the stub") from None
