"""Throughput and peak memory of the U-Net presets: training steps per second and images per
second when sampling, on the CPU and, when there is one, on a CUDA GPU.

A training step is one DDPM step (``ddpm.simple_loss`` with T = 1000, backward, Adam) on a
batch of MNIST-sized images (1 x 28 x 28). Sampling speed is measured as network evaluations
of a batch without gradients; "images/s (1 step)" is batch / time per evaluation, and a
sampler of k steps produces images k times slower (e.g. "images/s (1000 steps)").

On CUDA every preset is also measured with bf16 autocast, channels-last memory format and
``torch.compile`` (each variant on its own, and all together); peak memory is
``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``.

CPU peak memory: every measurement runs in a fresh Python subprocess, and the report gives
that process's peak resident set size (``VmHWM`` of ``/proc/self/status`` on Linux,
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` elsewhere) minus its resident size after
importing torch and the package, i.e. what the model, the optimiser and the activations
added. On Linux ``ru_maxrss`` is not used because a child started by fork + exec inherits the
parent's high-water mark; ``tracemalloc`` is not used because it does not see torch's
allocations.

Run one measurement by hand: ``python -m benchmarks.throughput '{"preset": "tiny", ...}'``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .common import ROOT, SectionResult, mode_name

QUICK = {
    "presets": ["tiny", "small"],
    "cpu_batch": 16,
    "gpu_batch": 128,
    "train_steps": 3,
    "sample_evals": 3,
    "warmup": 1,
    "cpu_threads": [1],
}
FULL = {
    "presets": ["tiny", "small", "base"],
    "cpu_batch": 64,
    "gpu_batch": 128,
    "train_steps": 10,
    "sample_evals": 10,
    "warmup": 2,
    "cpu_threads": [1, "all"],
}
GPU_VARIANTS = [
    {"name": "fp32", "bf16": False, "channels_last": False, "compile": False},
    {"name": "bf16 autocast", "bf16": True, "channels_last": False, "compile": False},
    {"name": "channels_last", "bf16": False, "channels_last": True, "compile": False},
    {"name": "torch.compile", "bf16": False, "channels_last": False, "compile": True},
    {
        "name": "bf16 + channels_last + compile",
        "bf16": True,
        "channels_last": True,
        "compile": True,
    },
]
CPU_VARIANTS = [{"name": "fp32", "bf16": False, "channels_last": False, "compile": False}]


def _proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MiB, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    current = _proc_status_mib("VmRSS")
    return current if current is not None else _peak_rss_mib()


def _peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB: VmHWM on Linux, else ru_maxrss.

    On Linux ``ru_maxrss`` of a child started by fork + exec also counts the parent's size at
    the fork (the kernel carries the old high-water mark over the exec), so it would report
    the benchmark driver's memory; VmHWM belongs to the new address space only.
    """
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS


def measure(config: dict) -> dict:
    """One preset on one device with one variant: training steps/s, images/s, peak memory."""
    import torch

    from dlai_diffusion import ddpm
    from dlai_diffusion.nets import count_parameters, unet
    from dlai_diffusion.schedules import Schedule

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    device = torch.device(config["device"])
    baseline = _rss_mib()
    torch.manual_seed(0)
    schedule = Schedule.linear(1000).to(device)
    net = unet(config["preset"], 1, 28).to(device)
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    model = torch.compile(net) if config["compile"] else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    batch = config["batch"]
    generator = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, 1, 28, 28, device=device, generator=generator)
    x0 = x0.contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch,), device=device, generator=generator)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["bf16"])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        with autocast:
            loss = ddpm.simple_loss(model, schedule, x0, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sample_eval() -> None:
        with torch.no_grad(), autocast:
            model(x0, t)

    def timed(fn, n: int) -> float:
        for _ in range(config["warmup"]):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - start) / n

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_seconds = timed(train_step, config["train_steps"])
    train_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    eval_seconds = timed(sample_eval, config["sample_evals"])
    if device.type == "cuda":
        sample_peak = torch.cuda.max_memory_allocated(device) / 2**20
        memory = {"train_peak_mib": train_peak, "sample_peak_mib": sample_peak}
    else:  # the process high-water mark covers training and sampling together
        memory = {"peak_mib": _peak_rss_mib() - baseline}
    return {
        "params": count_parameters(net),
        "train_steps_per_s": 1 / train_seconds,
        "train_images_per_s": batch / train_seconds,
        "images_per_s_1_step": batch / eval_seconds,
        "images_per_s_1000_steps": batch / eval_seconds / 1000,
        **memory,
    }


def _in_subprocess(config: dict, timeout: float = 1800) -> dict:
    """Run :func:`measure` in a fresh interpreter so that its peak memory is its own."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.throughput", json.dumps(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {out.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])


def run(quick: bool) -> SectionResult:
    import os

    import torch

    sizes = dict(QUICK if quick else FULL)
    cores = len(os.sched_getaffinity(0))
    thread_counts = sorted({cores if n == "all" else int(n) for n in sizes["cpu_threads"]})
    sizes["cpu_peak_memory"] = "peak RSS (VmHWM) of a fresh subprocess minus its RSS after imports"
    sizes["gpu_peak_memory"] = "torch.cuda.max_memory_allocated (training; sampling)"
    result = SectionResult(
        name="throughput",
        title="U-Net throughput and peak memory (DDPM training step; one sampling evaluation)",
        mode=mode_name(quick),
        sizes=sizes,
        columns=["device", "threads", "preset", "variant", "batch", "params"]
        + ["train_steps_per_s"]
        + ["train_images_per_s", "images_per_s_1_step", "images_per_s_1000_steps"]
        + ["peak_mib", "train_peak_mib", "sample_peak_mib"],
    )
    devices = [("cpu", n, CPU_VARIANTS, sizes["cpu_batch"]) for n in thread_counts]
    if torch.cuda.is_available():
        devices.append(("cuda", None, GPU_VARIANTS, sizes["gpu_batch"]))
    else:
        result.notes.append("no CUDA device on this machine: GPU variants not measured")
    for device, threads, variants, batch in devices:
        for preset in sizes["presets"]:
            for variant in variants:
                config = {
                    "preset": preset,
                    "device": device,
                    "batch": batch,
                    "train_steps": sizes["train_steps"],
                    "sample_evals": sizes["sample_evals"],
                    "warmup": sizes["warmup"] + (2 if variant["compile"] else 0),
                    "threads": threads,
                    **{k: v for k, v in variant.items() if k != "name"},
                }
                row = {"device": device, "threads": threads, "preset": preset}
                row["variant"] = variant["name"]
                row["batch"] = batch
                row.update(_in_subprocess(config))
                result.rows.append(row)
    if any("error" in row for row in result.rows):
        result.columns.append("error")
    result.notes.append(
        f"CPU: batch {sizes['cpu_batch']}; times are the mean of "
        f"{sizes['train_steps']} training steps and {sizes['sample_evals']} evaluations after "
        "warm-up. On a shared machine they vary with the load (see the Sections table)."
    )
    return result


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
