"""One UNet forward (a CFG batch of 2: one sampler step) per attention backend, random weights.

    python bench/denoiser_step.py                 # SD1.5 UNet at 512x512, fp16, on the GPU
    python bench/denoiser_step.py --model sdxl    # SDXL UNet at 1024x1024 (REFERENCE.md section 5 measured it)
    python bench/denoiser_step.py --tiny          # the tiny test UNet on the CPU, fp32 (a smoke test)

The configs are written out here (diffusers' own SD1.5 / SDXL values): nothing is downloaded. Weights are
random: a step's compute does not depend on their values. Each backend is installed with the worker's own
processor (worker.attention.processor), so this times exactly what a job runs; `diff` is the output's max
difference to diffusers' default processor, relative to its scale.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from _common import backends, default_kernels_dir, describe, pick_device, time_ms

from worker.attention.processor import KernelAttnProcessor, install, uninstall
from worker.sampling.capture import UNetRunner

SD15: dict[str, Any] = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # diffusers' defaults
SDXL: dict[str, Any] = dict(
    sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
TINY: dict[str, Any] = dict(  # worker/models/tiny.py's UNet
    sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=16,
)
MODELS = {"sd15": SD15, "sdxl": SDXL, "tiny": TINY}


def build(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: seconds for SDXL instead of minutes on a CPU
        unet = UNet2DConditionModel(**config)
    return unet.to(dtype).eval().requires_grad_(False)


def inputs(unet: Any, device: torch.device, dtype: torch.dtype, batch: int = 2) -> dict[str, Any]:
    cfg = unet.config
    gen = torch.Generator().manual_seed(1)
    side = cfg.sample_size

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    kwargs: dict[str, Any] = dict(
        sample=rand(batch, cfg.in_channels, side, side),
        timestep=torch.full((batch,), 500.0, device=device),
        encoder_hidden_states=rand(batch, 77, cfg.cross_attention_dim),
    )
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": rand(batch, pooled), "time_ids": rand(batch, 6)}
    return kwargs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default=None)
    parser.add_argument("--tiny", action="store_true", help="the tiny UNet on the CPU (a smoke test)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--kernels-dir", type=Path, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="also write a PNG bar chart of ms/step here")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes for SDXL)")
    args = parser.parse_args(argv)
    device = pick_device(args.device, args.tiny)
    model = args.model or ("tiny" if args.tiny else "sd15")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    iters = args.iters or (3 if args.tiny else 20)
    unet = build(MODELS[model], device, dtype)
    kwargs = inputs(unet, device, dtype)
    print(describe(device, dtype))
    print(f"model: {model} UNet, latents {tuple(kwargs['sample'].shape)}, random weights")

    def step() -> torch.Tensor:
        return unet(**kwargs, return_dict=False)[0]

    with torch.inference_mode():
        reference = step().float()
    rows: list[tuple[str, float | None, str]] = []
    for name, (fn, spec, note) in backends(args.kernels_dir or default_kernels_dir(), device,
                                           include_math=False).items():
        uninstall(unet)
        if fn is None:
            rows.append((name, None, note))
            continue
        if spec is not None and str(dtype).removeprefix("torch.") not in spec.dtypes:
            rows.append((name, None, f"needs {'/'.join(spec.dtypes)}"))
            continue
        if name != "sdpa":  # "sdpa" is diffusers' default processor, as the worker leaves it
            dtypes = tuple(getattr(torch, d) for d in spec.dtypes) if spec else None
            install(unet, KernelAttnProcessor(fn, name, dtypes), spec.max_head_dim if spec else None,
                    spec.head_dim_multiple if spec else 1)
        try:
            with torch.inference_mode():
                diff = float((step().float() - reference).abs().max() / reference.abs().max())
            rows.append((name, time_ms(step, device, 3, iters), f"{diff:.1e}"))
        except Exception as exc:
            rows.append((name, None, f"{type(exc).__name__}: {exc}".splitlines()[0][:70]))
    uninstall(unet)
    capture_rows = capture_table(unet, kwargs, step, device, iters, args.compile)
    fastest = min((ms for _, ms, _ in rows if ms is not None), default=None)
    print(f"{'backend':<15} {'ms/step':>10} {'vs fastest':>10} {'diff':>8}")
    for name, ms, note in rows:
        if ms is None:
            print(f"{name:<15} {'n/a':>10}  {note}")
        else:
            print(f"{name:<15} {ms:10.2f} {ms / fastest:9.2f}x {note:>8}")

    for line in capture_rows:
        print(line)
    if args.plot is not None:
        plot(args.plot, rows, capture_rows, f"{model} UNet step, {describe(device, dtype).removeprefix('device: ')}")


def plot(path: Path, rows: list[tuple[str, float | None, str]], capture_rows: list[str], title: str) -> None:
    """Bar chart of the table's ms/step: each backend eager, plus the CUDA-graph runner when it ran."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    bars = [(name, ms) for name, ms, _ in rows if ms is not None]
    # capture_table's rows: "<runner> <ms> <ratio>x ..." after its header; absent on a CPU.
    bars += [(f"{parts[0]} (runner)", float(parts[1])) for line in capture_rows[1:]
             if len(parts := line.split()) > 1 and parts[0] in ("eager", "cuda_graph", "compile")]
    bars += [("gpu kernels", float(line.split()[2])) for line in capture_rows if line.startswith("gpu kernels")]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(bars)), 4.5))
    colors = ["tab:orange" if name.endswith("(runner)") else "tab:gray" if name == "gpu kernels" else "tab:blue"
              for name, _ in bars]
    drawn = ax.bar([name for name, _ in bars], [ms for _, ms in bars], color=colors)
    ax.bar_label(drawn, fmt="%.2f")
    ax.set_ylabel("ms per step (CFG batch 2)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


def kernel_ms(step: Any, iters: int) -> float:
    """GPU time of one step's kernels alone (the profiler's device time, summed): the floor a step could reach
    if launching them cost nothing."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    total_us = sum(event.self_device_time_total for event in prof.key_averages()
                   if event.device_type == DeviceType.CUDA)
    return total_us / 1000 / iters if total_us else float("nan")


def capture_table(unet: Any, kwargs: dict[str, Any], step: Any, device: torch.device, iters: int,
                  compile_too: bool = False) -> list[str]:
    """Eager vs the worker's runners (worker/sampling/capture.py), default attention, next to the GPU time of
    the step's kernels: how much of a step is launch overhead, and how much capture removes."""
    if device.type != "cuda":
        return ["capture: CUDA graphs need a GPU; on the CPU the runner runs eagerly"]
    inputs = (kwargs["sample"], kwargs["timestep"], kwargs["encoder_hidden_states"], kwargs.get("added_cond_kwargs"))
    with torch.inference_mode():
        reference = step().float()
        floor = kernel_ms(step, min(iters, 5))
        timed = [("eager", time_ms(step, device, 3, iters), "")]
        modes = ["cuda_graph", *(["compile"] if compile_too else [])]
        for mode in modes:
            runner = UNetRunner(unet, mode)
            started = time.perf_counter()
            out = runner(*inputs)
            out = runner(*inputs)  # cuda_graph captures on the second call of a shape
            torch.cuda.synchronize()
            setup_s = time.perf_counter() - started
            diff = float((out.float() - reference).abs().max() / reference.abs().max())
            state = "failed, eager" if runner.failed else f"set-up {setup_s:.1f}s"
            timed.append((mode, time_ms(lambda runner=runner: runner(*inputs), device, 3, iters),
                          f"({state}; diff {diff:.1e})"))
    eager_ms = timed[0][1]
    lines = [f"{'runner':<15} {'ms/step':>10} {'vs eager':>10} {'vs kernels':>11}",
             f"{'gpu kernels':<15} {floor:10.2f} {floor / eager_ms:9.2f}x {1.0:10.2f}x  (profiler device time)"]
    for mode, ms, note in timed:
        lines.append(f"{mode:<15} {ms:10.2f} {ms / eager_ms:9.2f}x {ms / floor:10.2f}x  {note}".rstrip())
    return lines


if __name__ == "__main__":
    main()
