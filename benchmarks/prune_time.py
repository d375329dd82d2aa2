"""Where a pruning run spends its time, against the reference implementation's way.

The engine (prompts encoded once, latent-only trajectories, Hessians shared by layers
with one input) is timed per stage for P = 1, 4, 10 module packages, next to the same
pruning driven the way the reference does it: the full pipeline per package (text
encoders on every prompt, VAE decode of every image). Both runs use the same seeds,
so the pruned weights are identical; only the wasted work differs. Run:

    python benchmarks/prune_time.py [--family sd3] [--device cuda] [--prompts 8] [--resolution 64]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.architectures.components import denoiser_of
from obsdiff_hub.pruning.prompts import builtin_prompts


def reference_style(pipe, cal: oh.CalibrationConfig):
    """Calibration as the reference implementation runs it: prompts in, decoded images out, every package."""
    prompts = list(cal.prompts.texts)

    def calibrate(model, set_step):
        for index in range(0, len(prompts), cal.batch_size):
            set_step(0)

            def step_end(p, i, t, tensors):
                set_step(min(i + 1, cal.steps - 1))
                return tensors

            batch = prompts[index : index + cal.batch_size]
            pipe(
                batch,
                num_inference_steps=cal.steps,
                guidance_scale=cal.guidance_scale,
                height=cal.resolution,
                width=cal.resolution,
                generator=[torch.Generator().manual_seed(cal.seed + index + i) for i in range(len(batch))],
                output_type="pil",
                callback_on_step_end=step_end,
            )

    return calibrate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="sd3", choices=sorted(tiny.TINY_PIPELINES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    base = tiny.TINY_PIPELINES[args.family]()
    base.set_progress_bar_config(disable=True)
    prompts = builtin_prompts()[: args.prompts]
    cal = oh.CalibrationConfig(
        prompts=prompts, steps=args.steps, guidance_scale=5.0, resolution=args.resolution, batch_size=4
    )
    print(
        f"# {platform.machine()} {args.device}, torch {torch.__version__}, tiny {args.family}, {len(prompts)} "
        f"prompts × {args.steps} steps at {args.resolution}²"
    )
    print(
        "| P | engine total (s) | encode | trajectories | Hessians | solves | reference-style total (s) | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for packages in (1, 4, 10):
        config = dict(granularity="unstructured", sparsity=0.5, packages=packages)
        ours_pipe = copy.deepcopy(base)
        start = time.perf_counter()
        ours = oh.prune(ours_pipe, config, calibration=cal, device=args.device)
        ours_s = time.perf_counter() - start
        ref_pipe = copy.deepcopy(base).to(args.device)
        ref_pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        oh.prune(ref_pipe, config, calibration=reference_style(ref_pipe, cal), steps=args.steps, device=args.device)
        ref_s = time.perf_counter() - start
        st = ours.report.stages
        same = all(
            torch.equal(a, b)
            for a, b in zip(denoiser_of(ours_pipe).state_dict().values(), denoiser_of(ref_pipe).state_dict().values())
        )
        print(
            f"| {len(ours.report.packages)} | {ours_s:.2f} | {st['prompt_encoding_s']:.2f} | "
            f"{st['trajectories_s']:.2f} | "
            f"{st['hessian_accumulation_s']:.2f} | {st['solve_s']:.2f} | {ref_s:.2f} | {ref_s / ours_s:.2f}× "
            f"{'(same weights)' if same else '(weights differ!)'} |"
        )


if __name__ == "__main__":
    main()
