"""The refining solvers (``solver: obs+lsq`` and ``admm``) against the paper's greedy pass (``obs``).

Three parts, each side by side in one process:

- ``shapes``: the embedded shapes model, one module package (so every solver sees the same
  Hessians and the layer errors compare one to one), ``--seeds`` calibration seeds (32 different
  captions each), mean ± sd of the PSNR of the pruned model's images against the dense model's
  (60 fixed captions, same seeds), caption accuracy, the sum of the layers' relative
  reconstruction errors, and the prune time.
- ``real``: real-shape layers: the public SD3-Medium config with seeded random weights (as
  ``benchmarks/full_scale.py`` builds it), Hessians from its own activations (1 prompt × 4 steps at
  512² by default: 8192 image tokens, more than the widest layer's 6144 columns, so full rank),
  ``--block`` only; the sum of relative layer errors and the solve time per solver at 50% and 2:4.
- ``time``: solve time of one layer at 1280×5120 (SDXL FFN out) and 2432×9728 (SD3.5-Large)
  (``--shapes``), 50% and 2:4, on correlated synthetic inputs.

Run:

    python benchmarks/solver_quality.py [--parts shapes,real,time] [--seeds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import obsdiff_hub as oh
from obsdiff_hub.maths.admm import AdmmSettings, layer_error, refine
from obsdiff_hub.maths.obs import obs_prune_shared
from obsdiff_hub.pruning.prompts import builtin_prompts
from obsdiff_hub.shapes.pipeline import evaluate, load_shapes_pipeline

SOLVERS = ("obs", "obs+lsq", "admm")
SETTINGS = {
    "50%": {"granularity": "unstructured", "sparsity": 0.5},
    "70%": {"granularity": "unstructured", "sparsity": 0.7},
    "2:4": {"granularity": "n:m", "n": 2, "m": 4},
}


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def shapes(seeds: int, device: str) -> None:
    _, dense_images = evaluate(load_shapes_pipeline())
    print(f"\n## shapes model, 1 package, {seeds} calibration seeds (mean ± sd)\n")
    print("| setting | solver | PSNR vs dense (dB) | caption acc. | Σ layer rel. error | vs obs | prune time (s) |")
    print("|---|---|---|---|---|---|---|")
    for label, setting in SETTINGS.items():
        errors_obs: list[float] = []
        for solver in SOLVERS:
            psnr, accuracy, errors, seconds = [], [], [], []
            for seed in range(seeds):
                calibration = oh.CalibrationConfig(
                    prompts=builtin_prompts("shapes")[32 * seed : 32 * seed + 32],
                    steps=20,
                    guidance_scale=4.0,
                    resolution=32,
                    batch_size=8,
                    seed=24432 + seed,
                )
                pipe = load_shapes_pipeline()
                start = time.perf_counter()
                report = oh.prune(
                    pipe, {**setting, "packages": 1, "solver": solver}, calibration=calibration, device=device
                ).report
                seconds.append(time.perf_counter() - start)
                scores, _ = evaluate(pipe.to("cpu"), reference=dense_images)
                psnr.append(scores["psnr_vs_dense"])
                accuracy.append(scores["all"])
                errors.append(sum(r.relative_error for r in report.layers))
            if solver == "obs":
                errors_obs = errors
            ratio = statistics.mean(e / o for e, o in zip(errors, errors_obs))
            print(
                f"| {label} | {solver} | {statistics.mean(psnr):.2f} ± {spread(psnr):.2f} | "
                f"{statistics.mean(accuracy):.3f} ± {spread(accuracy):.3f} "
                f"| {statistics.mean(errors):.4g} | {ratio:.3f}× | {statistics.mean(seconds):.1f} |",
                flush=True,
            )


def real(block: int, device: str, steps: int, resolution: int, solvers: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from full_scale import build_pipeline

    from obsdiff_hub.zoo.recipes import load_recipe

    recipe = load_recipe("sd3-medium-unstructured-50")
    calibration = recipe.calibration.model_copy(
        update={
            "prompts": recipe.calibration.prompts.model_copy(update={"count": 1}),
            "steps": steps,
            "resolution": resolution,
            "batch_size": 1,
        }
    )
    tokens = 2 * steps * (resolution // 16) ** 2  # image tokens (2×2 patches of 8× latents), CFG doubles them
    print(
        f"\n## real shapes: SD3-Medium block {block} (random weights, Hessians from 1 prompt × {steps} steps at "
        f"{resolution}², {tokens} image tokens per Hessian)\n"
    )
    print("| setting | solver | Σ layer rel. error | vs obs | layers at most obs's | solve time (s) |")
    print("|---|---|---|---|---|---|")
    for label, setting in (("50%", SETTINGS["50%"]), ("2:4", SETTINGS["2:4"])):
        reference = None
        for solver in solvers:
            pipe = build_pipeline(recipe)
            report = oh.prune(
                pipe,
                {**setting, "packages": 1, "blocks": f"{block}:{block + 1}", "solver": solver},
                calibration=calibration,
                device=device,
            ).report
            errors = {r.name: r.relative_error for r in report.layers}
            reference = reference or errors
            at_most = sum(errors[k] <= reference[k] * (1 + 1e-6) for k in errors)
            print(
                f"| {label} | {solver} | {sum(errors.values()):.4g} | "
                f"{sum(errors.values()) / sum(reference.values()):.3f}× "
                f"| {at_most}/{len(errors)} | {report.stages['solve_s']:.1f} |",
                flush=True,
            )


def timing(device: str, shapes: list[tuple[int, int]]) -> None:
    print(f"\n## solve time of one layer (correlated synthetic inputs, {device})\n")
    print(
        "| shape | setting | obs (s) | admm (s) | admm / obs | admm, fp32 steps (s) | "
        "error admm / obs | error admm fp32 steps / obs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    runs = {  # (search, settings); obs+lsq's 100 fp32 re-fit steps cost minutes at 2432×9728, so not here
        "admm": (True, AdmmSettings()),
        "admm fp32": (True, AdmmSettings(step_dtype=torch.float32)),
    }
    for rows, cols in shapes:
        g = torch.Generator().manual_seed(0)
        X = torch.randn(cols, 2 * cols, generator=g)
        X = X + 0.5 * X.roll(1, 0)
        H = (2 * X @ X.T / X.shape[1]).to(device)
        W = torch.randn(rows, cols, generator=g).to(device)
        del X
        for label, (sparsity, n, m) in (("50%", (0.5, 0, 0)), ("2:4", (0.5, 2, 4))):
            obs_prune_shared([W], H, sparsity, n, m)  # warm-up
            start = time.perf_counter()
            ((Wo, mask),) = obs_prune_shared([W], H, sparsity, n, m)
            t_obs = time.perf_counter() - start
            base = float(layer_error(W, Wo, H).sum())
            seconds, ratios = {}, {}
            for name, (search, settings) in runs.items():
                start = time.perf_counter()
                ((result, _),) = refine([W], H, [Wo], [mask], search=search, n=n, m=m, settings=settings)
                seconds[name] = time.perf_counter() - start
                ratios[name] = float(layer_error(W, result, H).sum()) / base
            print(
                f"| {rows}×{cols} | {label} | {t_obs:.1f} | {seconds['admm']:.1f} | "
                f"{seconds['admm'] / t_obs:.1f}× | {seconds['admm fp32']:.1f} | "
                f"{ratios['admm']:.3f} | {ratios['admm fp32']:.3f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="shapes,real,time")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--real-steps", type=int, default=4, help="calibration steps of the real part")
    parser.add_argument("--real-resolution", type=int, default=512, help="more image tokens than columns: full rank")
    parser.add_argument("--real-solvers", default="obs,admm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default="1280x5120,2432x9728", help="layer shapes of the time part, ROWSxCOLS,...")
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, device {args.device}"
    )
    parts = args.parts.split(",")
    if "shapes" in parts:
        shapes(args.seeds, args.device)
    if "real" in parts:
        real(args.block, args.device, args.real_steps, args.real_resolution, args.real_solvers.split(","))
    if "time" in parts:
        timing(args.device, [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")])  # type: ignore[misc]


if __name__ == "__main__":
    main()
