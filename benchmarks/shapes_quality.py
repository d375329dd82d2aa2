"""Quality of every method and sparsity on the embedded shapes model (dense vs pruned, same seeds).

    python benchmarks/shapes_quality.py

Caption accuracy is the shipped classifier's verdict on 60 generated images (shape,
colour and size all right, and the mean over those three; position is not learned by
this tiny UNet and is not scored); PSNR compares each pruned image with
the dense model's image for the same caption and seed. Calibration: 32 shape captions,
20 steps, guidance 4, packages 2, as in the tiny-shapes recipes.
"""

from __future__ import annotations

import platform
import time

import torch

import obsdiff_hub as oh
from obsdiff_hub.pruning.prompts import builtin_prompts
from obsdiff_hub.shapes.pipeline import evaluate, load_shapes_pipeline

RUNS = [
    ("obs-diff", "unstructured", 0.5),
    ("wanda", "unstructured", 0.5),
    ("dsnot", "unstructured", 0.5),
    ("magnitude", "unstructured", 0.5),
    ("obs-diff", "unstructured", 0.7),
    ("wanda", "unstructured", 0.7),
    ("magnitude", "unstructured", 0.7),
    ("obs-diff", "n:m", 2),
    ("wanda", "n:m", 2),
    ("magnitude", "n:m", 2),
    ("obs-diff", "structured", 0.3),
    ("l1", "structured", 0.3),
    ("obs-diff", "structured", 0.5),
    ("l1", "structured", 0.5),
]


def main() -> None:
    calibration = oh.CalibrationConfig(
        prompts=builtin_prompts("shapes")[:32], steps=20, guidance_scale=4.0, resolution=32, batch_size=8
    )
    dense_scores, dense_images = evaluate(load_shapes_pipeline())
    print(f"# {platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(
        "| method | granularity | ratio | caption acc. (all 3) | caption acc. (mean) | PSNR vs dense (dB) | prune "
        "time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| dense | – | – | {dense_scores['all']:.3f} | {dense_scores['mean']:.3f} | – | – |")
    for method, granularity, ratio in RUNS:
        pipe = load_shapes_pipeline()
        config = {"method": method, "granularity": granularity, "packages": 2}
        config.update({"n": 2, "m": 4} if granularity == "n:m" else {"sparsity": ratio})
        start = time.perf_counter()
        oh.prune(pipe, config, calibration=calibration)
        seconds = time.perf_counter() - start
        scores, _ = evaluate(pipe, reference=dense_images)
        label = "2:4" if granularity == "n:m" else f"{ratio:.0%}"
        print(
            f"| {method} | {granularity} | {label} | {scores['all']:.3f} | {scores['mean']:.3f} | "
            f"{scores['psnr_vs_dense']:.2f} | {seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
