"""Beyond OBS-Diff on the embedded shapes model: asymmetric calibration and sparsity allocation.

For each setting, three calibration seeds; fidelity to the dense model (PSNR of the same
prompts and seeds, 60 fixed captions) and caption accuracy, with the prune time. Variants:
``symmetric`` (OBS-Diff as published), ``asymmetric`` (``calibration_target: dense``) and
``asymmetric + allocation`` (``allocation: error``; not for N:M, whose pattern is fixed).
Calibration as in the shapes recipes (32 captions, 20 steps, guidance 4) with ``--packages``
module packages (the asymmetric target only acts from the second package on). Run:

    python benchmarks/beyond.py [--packages 4] [--seeds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import obsdiff_hub as oh
from obsdiff_hub.pruning.prompts import builtin_prompts
from obsdiff_hub.shapes.pipeline import evaluate, load_shapes_pipeline

SETTINGS = [("unstructured", 0.5), ("unstructured", 0.7), ("n:m", 2), ("structured", 0.3), ("structured", 0.5)]
VARIANTS = {
    "symmetric": {},
    "asymmetric": {"calibration_target": "dense"},
    "asymmetric + allocation": {"calibration_target": "dense", "allocation": "error"},
}


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    _, dense_images = evaluate(load_shapes_pipeline())
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, shapes model, "
        f"{args.packages} packages, "
        f"{args.seeds} calibration seeds (mean ± sd)"
    )
    print("| granularity | ratio | variant | PSNR vs dense (dB) | caption acc. (all 3) | prune time (s) |")
    print("|---|---|---|---|---|---|")
    for granularity, ratio in SETTINGS:
        for variant, extra in VARIANTS.items():
            if granularity == "n:m" and "allocation" in extra:
                continue
            psnr, accuracy, seconds = [], [], []
            for seed in range(args.seeds):
                calibration = oh.CalibrationConfig(
                    prompts=builtin_prompts("shapes")[32 * seed : 32 * seed + 32],
                    steps=20,
                    guidance_scale=4.0,
                    resolution=32,
                    batch_size=8,
                    seed=24432 + seed,
                )
                config = {"granularity": granularity, "packages": args.packages, **extra}
                config.update({"n": 2, "m": 4} if granularity == "n:m" else {"sparsity": ratio})
                pipe = load_shapes_pipeline()
                start = time.perf_counter()
                oh.prune(pipe, config, calibration=calibration)
                seconds.append(time.perf_counter() - start)
                scores, _ = evaluate(pipe, reference=dense_images)
                psnr.append(scores["psnr_vs_dense"])
                accuracy.append(scores["all"])
            label = "2:4" if granularity == "n:m" else f"{ratio:.0%}"
            print(
                f"| {granularity} | {label} | {variant} | {statistics.mean(psnr):.2f} ± {_spread(psnr):.2f} | "
                f"{statistics.mean(accuracy):.3f} ± {_spread(accuracy):.3f} | {statistics.mean(seconds):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
