"""One training loop for every lecture and the command line: EMA of the weights, bf16
mixed precision, gradient clipping, a divergence guard, atomic checkpoints that
resume exactly, and a progress bar.

The two things a caller supplies:

* ``loss_fn(model, batch, generator)`` returns a scalar loss tensor, or a pair
  ``(loss, logs)`` where ``logs`` maps names to numbers (floats or 0-d tensors, the same
  names every step); ``generator`` is the one given to :func:`train` (may be ``None``) and
  should drive every random draw of the loss (noise levels, noise).
* ``data`` is either a callable ``data(generator) -> batch``, the natural choice for
  samplers and in-memory tensors (see :func:`random_batches`), or an iterable of batches
  (a list, a ``DataLoader``), cycled epoch after epoch. A batch is a tensor or a
  tuple/list/dict of tensors; it is moved to the model's device.

Exact resume: a run of 2N steps and a run of N steps followed by a resumed run to 2N
(with freshly built model, optimizer and generator) end with the same weights and loss
history, bit for bit on the CPU. The checkpoint stores everything that decides the rest of
the run: weights, EMA, optimizer and scheduler state, the step, the loss history, the state
of ``generator`` and of the global torch (CPU, CUDA, MPS), Python and NumPy RNGs, and the
position in the data stream. A callable ``data`` resumes exactly because its randomness
comes from ``generator``. An iterable is restarted and the batches already used in the
current epoch are skipped: exact when iterating it again gives the same batches (a list, a
``DataLoader`` without shuffling); a shuffling ``DataLoader`` draws a new order, so the
resumed run is equivalent in distribution, not bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import progress_enabled

__all__ = [
    "CHECKPOINT_NAME",
    "EMA",
    "TrainResult",
    "TrainingDiverged",
    "load_checkpoint",
    "random_batches",
    "save_checkpoint",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name that :func:`train` writes inside ``checkpoint_dir``."""

_FORMAT = "dlai_diffusion.checkpoint/1"


class TrainingDiverged(FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the per-step loss history (all steps, resumed ones
    included), the step reached, the wall-clock seconds of this call, the EMA (or None)
    and per-step histories of the loss function's extra logs (and ``grad_norm``, the norm
    before clipping, when ``grad_clip`` is set)."""

    losses: list[float]
    steps: int
    seconds: float
    ema: EMA | None = None
    logs: dict[str, list[float]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Exponential moving average of the weights
# --------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's parameters (Polyak & Juditsky, 1992), used
    for sampling by Song & Ermon (2020) and Ho et al. (2020):

        theta_ema <- d * theta_ema + (1 - d) * theta,   after every optimizer step.

    With ``warmup=True`` the k-th update (k = 1, 2, ...) uses ``d_k = min(decay, (1 + k) /
    (10 + k))``, so that a short run is not dominated by the initial weights. Buffers (such
    as normalisation statistics) are copied, not averaged. ``ema_model`` is a frozen copy
    in eval mode; ``copy_to(model)`` loads the averaged weights into ``model``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        k = self.num_updates + 1
        return min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current parameters."""
        d = self.current_decay()
        for averaged, current in zip(self.ema_model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current.detach().to(averaged.dtype), 1.0 - d)
        for averaged, current in zip(self.ema_model.buffers(), model.buffers(), strict=True):
            averaged.copy_(current)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights (and buffers) with the averaged ones."""
        model.load_state_dict(self.ema_model.state_dict())

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "model": self.ema_model.state_dict(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.ema_model.load_state_dict(state["model"])


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _rng_state(generator: torch.Generator | None) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "mps": None,
        "python": random.getstate(),
        "generator": None if generator is None else generator.get_state(),
    }
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    numpy_state = np.random.get_state(legacy=False)
    state["numpy"] = {
        "bit_generator": numpy_state["bit_generator"],
        "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "pos": int(numpy_state["state"]["pos"]),
        "has_gauss": int(numpy_state["has_gauss"]),
        "gauss": float(numpy_state["gauss"]),
    }
    return state


def _restore_rng(state: Mapping, generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(
                "the checkpoint has another number of CUDA devices; CUDA RNG not restored",
                stacklevel=3,
            )
    if state.get("mps") is not None:
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            torch.mps.set_rng_state(state["mps"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    if state.get("generator") is not None:
        if generator is None:
            warnings.warn(
                "the checkpoint was written by a run with a generator; pass generator= to "
                "resume it exactly",
                stacklevel=3,
            )
        else:
            generator.set_state(state["generator"])


_PLAIN = (str, int, float, bool, type(None), Tensor)


def _check_plain(value: Any, name: str) -> None:
    """Checkpoints hold only what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_plain(key, name)
            _check_plain(item, name)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, name)
    elif not isinstance(value, _PLAIN):
        raise TypeError(
            f"{name} may hold only tensors, numbers, strings, None and lists/tuples/dicts of "
            f"them (so that torch.load(weights_only=True) reads it), got {type(value).__name__}"
        )


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: the file
    at ``path`` is always either the previous checkpoint or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".pt.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    ema: EMA | None = None,
    scheduler: Any | None = None,
    step: int = 0,
    losses: Iterable[float] = (),
    logs: Mapping[str, list[float]] | None = None,
    generator: torch.Generator | None = None,
    data_position: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically to ``path`` and return the path.

    It stores the model, EMA, optimizer and scheduler states, the step, loss history and
    logs, the RNG states (global torch CPU/CUDA/MPS, Python, NumPy and ``generator``), the
    data position, and ``extra``: anything else made of tensors, numbers, strings and
    containers (for instance the model's configuration, so a command can rebuild it).
    """
    if extra is not None:
        _check_plain(extra, "extra")
    state = {
        "format": _FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "losses": [float(v) for v in losses],
        "logs": {k: [float(v) for v in vs] for k, vs in (logs or {}).items()},
        "rng": _rng_state(generator),
        "data": dict(data_position or {"epoch": 0, "index": 0}),
        "extra": None if extra is None else dict(extra),
    }
    path = Path(path)
    _atomic_save(state, path)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    ema: EMA | None = None,
    scheduler: Any | None = None,
    generator: torch.Generator | None = None,
    weights: str = "model",
    restore_rng: bool = False,
    map_location: str | torch.device | None = "cpu",
) -> dict:
    """Read a checkpoint of :func:`save_checkpoint` with ``torch.load(weights_only=True)``,
    load its states into the objects given and return the whole dictionary.

    ``weights="ema"`` loads the averaged weights into ``model`` (the usual choice for
    sampling). ``restore_rng=True`` also restores the global RNGs and ``generator``, as
    resuming training does; it is off by default so that loading a model for sampling
    leaves the caller's random state alone.
    """
    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a dlai_diffusion checkpoint")
    if model is not None:
        if weights == "ema":
            if state["ema"] is None:
                raise ValueError(f"{path} holds no EMA weights; use weights='model'")
            model.load_state_dict(state["ema"]["model"])
        else:
            model.load_state_dict(state["model"])
    for name, obj in (("optimizer", optimizer), ("ema", ema), ("scheduler", scheduler)):
        if obj is None:
            continue
        if state[name] is None:
            raise ValueError(f"{path} holds no {name} state")
        obj.load_state_dict(state[name])
    if restore_rng:
        _restore_rng(state["rng"], generator)
    return state


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def random_batches(*tensors: Tensor, batch_size: int) -> Callable:
    """A ``data`` callable for :func:`train`: each call draws ``batch_size`` distinct random
    rows (the same rows of every tensor) using the generator it is given.

    ``random_batches(x, batch_size=128)`` yields tensors, ``random_batches(x, y, ...)``
    tuples. Indices are drawn afresh each step (rows are independent across steps), which
    keeps resuming exact without any state besides the generator.
    """
    if not tensors:
        raise ValueError("random_batches needs at least one tensor")
    for i, x in enumerate(tensors):
        if not isinstance(x, Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {type(x).__name__}")
    n = tensors[0].shape[0] if tensors[0].dim() else 0
    if n == 0 or any(x.dim() == 0 or x.shape[0] != n for x in tensors):
        raise ValueError("tensors must be non-empty and share their first dimension")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an int in 1..{n}, got {batch_size!r}")

    def draw(generator: torch.Generator | None = None):
        device = generator.device if generator is not None else torch.device("cpu")
        index = torch.randperm(n, generator=generator, device=device)[:batch_size]
        batch = tuple(x[index.to(x.device)] for x in tensors)
        return batch[0] if len(batch) == 1 else batch

    return draw


class _BatchStream:
    """Batches from a callable or a cycled iterable, with a resumable position."""

    def __init__(self, data, generator, position: Mapping[str, int] | None = None):
        if isinstance(data, Tensor):
            raise TypeError(
                "data is a Tensor; wrap it so each step draws a minibatch: "
                "data=random_batches(x, batch_size=...)"
            )
        self.data = data
        self.generator = generator
        self.callable = callable(data)
        if not self.callable and not isinstance(data, Iterable):
            raise TypeError(
                "data must be a callable data(generator) -> batch or an iterable of batches, "
                f"got {type(data).__name__}"
            )
        self.epoch = int((position or {}).get("epoch", 0))
        self.index = 0
        self._iterator = None
        if not self.callable:
            self._iterator = iter(data)
            for _ in range(int((position or {}).get("index", 0))):
                self._next_from_iterable()

    def _next_from_iterable(self):
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.index == 0 or iter(self.data) is self.data:
                raise ValueError(
                    f"data ran out after {self.index} batches; pass a re-iterable (a list, "
                    "a DataLoader) or a callable data(generator) -> batch"
                ) from None
            self.epoch, self.index = self.epoch + 1, 0
            self._iterator = iter(self.data)
            batch = next(self._iterator)
        self.index += 1
        return batch

    def next(self):
        return self.data(self.generator) if self.callable else self._next_from_iterable()

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


def _to_device(batch, device: torch.device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def _divergence_message(step: int, what: str, value: float) -> str:
    return (
        f"training diverged at step {step}: the {what} is {value}. Try a smaller learning "
        "rate, gradient clipping (grad_clip=1.0), a smaller step size or noise level range, "
        "and check that the data are scaled sensibly (e.g. to [-1, 1]) and contain no NaN."
    )


def _split_loss(out) -> tuple[Tensor, Mapping]:
    loss, logs = out if isinstance(out, tuple) else (out, {})
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(
            "loss_fn must return a scalar tensor or a pair (scalar tensor, dict of logs), "
            f"got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    return loss.reshape(()), logs


def _floats(values: list) -> list[float]:
    """Numbers and 0-d tensors as floats, with one device read for all the tensors."""
    if values and all(isinstance(v, Tensor) for v in values):
        return torch.stack([v.reshape(()) for v in values]).tolist()
    return [float(v) for v in values]


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("model has no parameters to train") from None


def train(
    model: nn.Module,
    loss_fn: Callable,
    data: Callable | Iterable,
    steps: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 2e-4,
    scheduler: Any | None = None,
    ema_decay: float | None = None,
    ema_warmup: bool = True,
    grad_clip: float | None = None,
    amp: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    checkpoint_extra: Mapping[str, Any] | None = None,
    resume: bool = True,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    log_every: int = 10,
    callback: Callable[[int, float], bool | None] | None = None,
) -> TrainResult:
    """Train ``model`` in place until it has taken ``steps`` optimizer steps in total.

    Each step: draw a batch from ``data`` (moved to the model's device), compute
    ``loss_fn(model, batch, generator)`` (under bf16 autocast when ``amp="bf16"``, on CUDA and
    on CPUs, where bf16 matrix units make it about 1.6x faster for a U-Net; ignored with a
    warning elsewhere), back-propagate, clip the global gradient norm to
    ``grad_clip``, step the optimizer (Adam with ``lr`` unless given) and ``scheduler``, and
    update the EMA (``ema_decay``, see :class:`EMA`). The module docstring gives the exact
    contract of ``loss_fn`` and ``data``.

    Every ``log_every`` steps the losses are read from the device, checked (a NaN or
    infinite loss or gradient norm raises :class:`TrainingDiverged` naming the step and what
    to try), shown on the progress bar and passed to ``callback(step, loss)``, which may
    return True to stop early. The bar (``tqdm.auto``) is silent in fast mode and in
    headless runs (:func:`~dlai_diffusion.config.progress_enabled`) unless
    ``progress=True``, and off with ``progress=False``.

    With ``checkpoint_dir`` a checkpoint (``CHECKPOINT_NAME``) is written atomically every
    ``checkpoint_every`` steps and at the end, with ``checkpoint_extra`` stored alongside;
    with ``resume=True`` an existing one is loaded first and training continues from its
    step, exactly as if it had never stopped (see the module docstring). ``model`` and
    ``optimizer`` must be built the same way as in the run that wrote it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable: loss_fn(model, batch, generator) -> loss")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive int, got {log_every!r}")
    if checkpoint_every is not None and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(
            f"checkpoint_every must be a positive int or None, got {checkpoint_every!r}"
        )
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs checkpoint_dir")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    if amp not in (None, False, "bf16"):
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}")
    if checkpoint_extra is not None:
        _check_plain(checkpoint_extra, "checkpoint_extra")

    device = _model_device(model)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ema = None if ema_decay is None else EMA(model, ema_decay, warmup=ema_warmup)
    autocast = contextlib.nullcontext()
    if amp == "bf16":
        if device.type in ("cuda", "cpu"):
            autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        else:
            warnings.warn(
                f"amp='bf16' is used on CUDA and CPU only; training in full precision on "
                f"{device.type}",
                stacklevel=2,
            )

    step, losses, logs, state = 0, [], {}, None
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    if path is not None and resume and path.exists():
        state = load_checkpoint(path, model, optimizer=optimizer, ema=ema, scheduler=scheduler)
        step, losses = state["step"], list(state["losses"])
        logs = {k: list(v) for k, v in state["logs"].items()}
    saved_step = step if state is not None else None
    # Restarting an iterable may consume random numbers (a DataLoader draws a seed), as it
    # did when the interrupted run began its epoch; restore the RNGs only afterwards.
    stream = _BatchStream(data, generator, None if state is None else state["data"])
    if state is not None:
        _restore_rng(state["rng"], generator)

    def checkpoint() -> None:
        nonlocal saved_step
        saved_step = step
        save_checkpoint(
            path,
            model,
            optimizer=optimizer,
            ema=ema,
            scheduler=scheduler,
            step=step,
            losses=losses,
            logs=logs,
            generator=generator,
            data_position=stream.position(),
            extra=checkpoint_extra,
        )

    pending: list[Tensor] = []
    pending_logs: dict[str, list] = {}

    def flush() -> None:
        """Move pending values to the history; raise if any is not finite."""
        first = len(losses) + 1
        values = _floats(pending)
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise TrainingDiverged(_divergence_message(first + i, "loss", value))
        for name, items in pending_logs.items():
            items = _floats(items)
            if name == "grad_norm":
                for i, value in enumerate(items):
                    if not math.isfinite(value):
                        message = _divergence_message(first + i, "gradient norm", value)
                        raise TrainingDiverged(message)
            logs.setdefault(name, []).extend(items)
        losses.extend(values)
        pending.clear()
        pending_logs.clear()

    show = progress if progress is not None else progress_enabled()
    bar = tqdm(total=steps, initial=min(step, steps), disable=not show, desc="training")
    was_training = model.training
    model.train()
    start, stopped = time.perf_counter(), False
    try:
        while step < steps and not stopped:
            batch = _to_device(stream.next(), device)
            with autocast:
                loss, extra_logs = _split_loss(loss_fn(model, batch, generator))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                pending_logs.setdefault("grad_norm", []).append(norm.detach())
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            pending.append(loss.detach())
            for name, value in extra_logs.items():
                value = value.detach() if isinstance(value, Tensor) else value
                pending_logs.setdefault(name, []).append(value)
            due = path is not None and checkpoint_every is not None and step % checkpoint_every == 0
            if step % log_every == 0 or step == steps or due:
                n_new = len(pending)
                flush()
                bar.update(n_new)
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
                if callback is not None and callback(step, losses[-1]):
                    stopped = True
            if due:
                checkpoint()
        flush()
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    if path is not None and saved_step != step:
        checkpoint()
    return TrainResult(losses=losses, steps=step, seconds=seconds, ema=ema, logs=logs)
