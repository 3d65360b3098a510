"""The training loop: EMA, clipping, divergence guard, checkpoints and exact resume."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlai_diffusion import train as train_module
from dlai_diffusion.train import (
    CHECKPOINT_NAME,
    EMA,
    TrainingDiverged,
    load_checkpoint,
    random_batches,
    save_checkpoint,
    train,
)


def _mse(model, batch, generator):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _regression_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return x, y


# ---------------------------------------------------------------- EMA


def test_ema_is_the_closed_form_decayed_average():
    """theta_ema after k updates = d^k theta_0 + (1 - d) sum_i d^(k - i) theta_i."""
    model = nn.Linear(2, 1, bias=False)
    d = 0.9
    ema = EMA(model, decay=d, warmup=False)
    thetas = [model.weight.detach().clone()]
    for _ in range(4):
        with torch.no_grad():
            model.weight.copy_(torch.randn(1, 2))
        thetas.append(model.weight.detach().clone())
        ema.update(model)
    k = len(thetas) - 1
    expected = d**k * thetas[0] + sum((1 - d) * d ** (k - i) * thetas[i] for i in range(1, k + 1))
    torch.testing.assert_close(ema.ema_model.weight, expected)
    assert not ema.ema_model.weight.requires_grad and not ema.ema_model.training


def test_ema_warmup_schedule_and_state_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.3, warmup=True)
    decays = []
    for _ in range(4):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays == pytest.approx([2 / 11, 3 / 12, 0.3, 0.3])  # min(0.3, (1 + k) / (10 + k))
    previous = ema.ema_model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    ema.update(model)
    torch.testing.assert_close(ema.ema_model.weight, 0.3 * previous)
    other = EMA(nn.Linear(2, 2), decay=0.1, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert (other.decay, other.warmup, other.num_updates) == (0.3, True, 5)
    fresh = nn.Linear(2, 2)
    other.copy_to(fresh)
    torch.testing.assert_close(fresh.weight, ema.ema_model.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


# ---------------------------------------------------------------- the loop


def test_training_decreases_a_regression_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = _regression_data()
    result = train(
        model,
        _mse,
        random_batches(x, y, batch_size=32),
        300,
        lr=3e-2,
        ema_decay=0.9,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    assert len(result.losses) == 300 and result.steps == 300 and result.seconds > 0
    assert np.mean(result.losses[-20:]) < 1e-3 * np.mean(result.losses[:5])
    torch.testing.assert_close(model.weight, torch.tensor([[1.0, -2.0, 0.5]]), atol=1e-2, rtol=0)
    assert torch.allclose(result.ema.ema_model.weight, model.weight, atol=0.05)


def test_iterables_are_cycled_in_order_and_logs_are_kept():
    seen = []

    def loss_fn(model, batch, generator):
        seen.append(int(batch[0]))
        return model(batch[1:].float()[None]).sum() ** 2, {"batch_id": batch[0]}

    batches = [torch.tensor([i, 1, 2]) for i in range(3)]
    result = train(nn.Linear(2, 1), loss_fn, batches, 7, log_every=3, progress=False)
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    assert result.logs["batch_id"] == [0, 1, 2, 0, 1, 2, 0]

    one_shot = iter(batches)
    with pytest.raises(ValueError, match="data ran out after 3 batches"):
        train(nn.Linear(2, 1), loss_fn, one_shot, 5, progress=False)


def test_non_finite_loss_stops_with_advice():
    calls = []

    def loss_fn(model, batch, generator):
        calls.append(1)
        loss = (model(batch) ** 2).mean()
        return loss * float("nan") if len(calls) == 7 else loss

    with pytest.raises(TrainingDiverged, match="step 7") as info:
        train(nn.Linear(2, 1), loss_fn, lambda g: torch.randn(4, 2), 50, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert "learning rate" in str(info.value) and "clipping" in str(info.value)
    assert len(calls) == 10, "detected at the first read-out (log_every=10)"


def test_gradient_is_clipped_to_the_global_norm():
    """loss = <c, p> has gradient c, |c| = 10; with SGD(lr=1) the step is -c * 1 / 10."""
    model = nn.Linear(1, 1, bias=False)
    c = torch.tensor([[6.0, 8.0]])
    model.weight = nn.Parameter(torch.zeros(1, 2))
    before = model.weight.detach().clone()
    result = train(
        model,
        lambda m, batch, g: (c * m.weight).sum(),
        lambda g: None,
        1,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        grad_clip=1.0,
        progress=False,
    )
    step = model.weight.detach() - before
    torch.testing.assert_close(step, -c / 10)
    assert torch.linalg.vector_norm(step).item() == pytest.approx(1.0)
    assert result.logs["grad_norm"] == pytest.approx([10.0])


def test_bad_arguments_are_named():
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="random_batches"):
        train(model, _mse, torch.randn(10, 2), 1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(model, _mse, [1], -1, progress=False)
    with pytest.raises(ValueError, match="amp"):
        train(model, _mse, [1], 1, amp="fp8", progress=False)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_dir"):
        train(model, _mse, [1], 1, checkpoint_every=5, progress=False)
    with pytest.raises(TypeError, match="loss_fn must return a scalar"):
        train(model, lambda m, b, g: m(b), lambda g: torch.randn(4, 2), 1, progress=False)
    with pytest.raises(TypeError, match="checkpoint_extra"):
        train(model, _mse, [1], 0, checkpoint_extra={"f": print}, progress=False)


def test_bf16_autocast_runs_the_loss_in_bf16_on_cpu_and_keeps_fp32_weights():
    model = nn.Linear(3, 1)
    x, y = _regression_data(32)
    seen = []

    def loss(m, batch, generator):
        out = m(batch[0])
        seen.append(out.dtype)
        return (out.float() - batch[1]).pow(2).mean()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train(model, loss, [(x, y)], 2, amp="bf16", progress=False)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert len(result.losses) == 2 and model.weight.dtype == torch.float32
    train(model, loss, [(x, y)], 1, progress=False)
    assert seen[-1] == torch.float32


def test_progress_bar_is_silent_in_fast_mode(capsys, monkeypatch):
    monkeypatch.setenv("DLAI_FAST", "1")
    data = [_regression_data(16)]
    train(nn.Linear(3, 1), _mse, data, 3, progress=None)
    assert capsys.readouterr().err == ""
    train(nn.Linear(3, 1), _mse, data, 3, progress=True, log_every=1)
    assert "loss=" in capsys.readouterr().err


def test_progress_bar_is_silent_in_headless_runs(capsys, monkeypatch):
    monkeypatch.setenv("DLAI_FAST", "0")
    monkeypatch.setenv("DLAI_WIDGETS", "0")
    train(nn.Linear(3, 1), _mse, [_regression_data(16)], 3, progress=None)
    assert capsys.readouterr().err == ""


def test_callback_can_stop_training():
    seen = []

    def callback(step, loss):
        seen.append(step)
        return step >= 20

    data = [_regression_data(16)]
    result = train(nn.Linear(3, 1), _mse, data, 100, callback=callback, progress=False)
    assert seen == [10, 20] and result.steps == 20 and len(result.losses) == 20


def test_random_batches_draws_matching_distinct_rows():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    draw = random_batches(x, y, batch_size=6)
    bx, by = draw(torch.Generator().manual_seed(0))
    assert torch.equal(bx[:, 0].long(), by) and len(set(by.tolist())) == 6
    again = draw(torch.Generator().manual_seed(0))[1]
    assert torch.equal(again, by)
    assert random_batches(x, batch_size=3)(None).shape == (3, 1)
    with pytest.raises(ValueError, match="batch_size"):
        random_batches(x, batch_size=11)
    with pytest.raises(ValueError, match="first dimension"):
        random_batches(x, y[:5], batch_size=2)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_loads_with_weights_only(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    ema = EMA(model, 0.9)
    path = save_checkpoint(
        tmp_path / "c.pt",
        model,
        optimizer=opt,
        ema=ema,
        step=3,
        losses=[1.0, 0.5, 0.25],
        extra={"preset": "tiny", "sizes": (28, 28)},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 3 and raw["losses"] == [1.0, 0.5, 0.25]
    assert raw["extra"] == {"preset": "tiny", "sizes": (28, 28)}
    with torch.no_grad():
        ema.ema_model.weight.fill_(7.0)
    save_checkpoint(path, model, ema=ema)
    target = nn.Linear(3, 1)
    load_checkpoint(path, target, weights="ema")
    assert torch.all(target.weight == 7.0)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, target, optimizer=opt)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    model = nn.Linear(3, 1)
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, model, step=1)
    before = path.read_bytes()
    real_save = torch.save

    def save_then_crash(obj, f, *args, **kwargs):
        real_save({"half": torch.zeros(1000)}, f)
        raise OSError("disk full")

    monkeypatch.setattr(train_module.torch, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, nn.Linear(3, 1), step=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1


class _Net(nn.Module):
    """Uses dropout (global torch RNG) and draws from Python's and NumPy's RNGs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Dropout(0.2), nn.Linear(32, 2))

    def forward(self, x):
        return self.body(x)


def _denoising_loss(model, x, generator):
    noise = torch.randn(x.shape, generator=generator)
    weight = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
    return weight * ((model(x + noise) - noise) ** 2).mean()


def _run(steps, checkpoint_dir, data_kind, seed):
    """Fresh objects, seeded with ``seed`` (a resumed run must not depend on it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = _Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(40, 2, generator=torch.Generator().manual_seed(99))
    if data_kind == "callable":
        data = random_batches(points, batch_size=8)
    else:  # 5 batches per epoch, so epochs wrap around mid-run; iter() draws a seed
        data = DataLoader(TensorDataset(points), batch_size=8, shuffle=False)

    def loss_fn(m, batch, g):
        x = batch[0] if isinstance(batch, list) else batch
        return _denoising_loss(m, x, g)

    result = train(
        model,
        loss_fn,
        data,
        steps,
        optimizer=optimizer,
        scheduler=scheduler,
        ema_decay=0.9,
        grad_clip=0.5,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=4 if checkpoint_dir else None,
        generator=generator,
        progress=False,
        log_every=3,
    )
    return model, result


@pytest.mark.parametrize("data_kind", ["callable", "dataloader"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, data_kind):
    full_model, full = _run(26, None, data_kind, seed=0)
    _run(13, tmp_path, data_kind, seed=0)  # stops at 13 (checkpoints at 4, 8, 12, 13)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 13
    resumed_model, resumed = _run(26, tmp_path, data_kind, seed=12345)
    assert resumed.losses == full.losses
    assert resumed.logs == full.logs
    for a, b in zip(
        resumed_model.state_dict().values(), full_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    for a, b in zip(
        resumed.ema.ema_model.parameters(), full.ema.ema_model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    # a finished run resumes to nothing and changes nothing
    again_model, again = _run(26, tmp_path, data_kind, seed=7)
    assert again.losses == full.losses and again.steps == 26
    assert torch.equal(again_model.body[0].weight, full_model.body[0].weight)


def test_resume_without_restoring_the_rngs_would_differ(tmp_path, monkeypatch):
    """The resume test can fail: skipping the RNG restore changes the continuation."""
    _, full = _run(10, None, "callable", seed=0)
    _run(5, tmp_path, "callable", seed=0)
    monkeypatch.setattr(train_module, "_restore_rng", lambda state, generator: None)
    _, resumed = _run(10, tmp_path, "callable", seed=1)
    assert resumed.losses[:5] == full.losses[:5]
    assert resumed.losses[5:] != full.losses[5:]
