"""Recovery on the embedded shapes model: one-shot against healed, 3 recovery seeds, side by side.

    python benchmarks/recovery.py [--seeds 3]

Every setting is pruned once (its one-shot result does not depend on the recovery seed), then healed
from a copy with each seed: the seed moves the recovery's trajectories (trajectory t sampled with seed + t)
and the rows each step draws. Training prompts are the 90 shapes captions outside the 60 evaluation
scenes (10 held out for validation), each sampled 3 times (the default ``samples_per_prompt``); the "fast"
row heals 40 of them on 10-step trajectories for 60 steps. Evaluation as in ``shapes_quality.py`` (60
scenes, seeds 0-59, PSNR against the dense model's image of the same scene and seed). Times are this
process's wall clock.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time

import torch

import obsdiff_hub as oh
from obsdiff_hub.pruning.prompts import builtin_prompts
from obsdiff_hub.recovery.heal import recover
from obsdiff_hub.shapes.dataset import evaluation_scenes
from obsdiff_hub.shapes.pipeline import evaluate, load_shapes_pipeline

CALIBRATION = dict(prompts=builtin_prompts("shapes")[:32], steps=20, guidance_scale=4.0, resolution=32, batch_size=8)
HEAL = dict(prompts={"source": "builtin", "path": "shapes", "count": 90}, validation_prompts=10)
FAST = dict(
    HEAL,
    prompts={"source": "builtin", "path": "shapes", "count": 40},
    validation_prompts=5,
    steps=60,
    trajectory_steps=10,
    validate_every=10,
)
SETTINGS = [
    ("structured 30%", dict(granularity="structured", sparsity=0.3), HEAL),
    ("structured 30%, fast heal", dict(granularity="structured", sparsity=0.3), FAST),
    ("structured 50%", dict(granularity="structured", sparsity=0.5), HEAL),
    ("unstructured 70%, admm", dict(granularity="unstructured", sparsity=0.7, solver="admm"), HEAL),
    ("structured 10%", dict(granularity="structured", sparsity=0.1), HEAL),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    seeds = [1_000_003 * (k + 1) for k in range(args.seeds)]
    excluded = [s.caption for s in evaluation_scenes()]
    dense_scores, dense_images = evaluate(load_shapes_pipeline())
    teacher = load_shapes_pipeline().unet
    print(f"# {platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, seeds {seeds}")
    print(f"dense: caption accuracy {dense_scores['all']:.3f}")
    print(
        "| setting | prune (s) | one-shot PSNR (dB) | healed PSNR per seed (dB) | mean gain (dB) | one-shot acc. | "
        "healed acc. per seed | steps kept per seed | heal (s, mean) | heal / prune time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, prune, heal in SETTINGS:
        pruned = load_shapes_pipeline()
        start = time.perf_counter()
        oh.prune(pruned, dict(packages=2, **prune), calibration=CALIBRATION)
        prune_s = time.perf_counter() - start
        one_shot, _ = evaluate(pruned, reference=dense_images)
        psnr, accuracy, kept, seconds = [], [], [], []
        for seed in seeds:
            pipe = copy.deepcopy(pruned)
            with tempfile.TemporaryDirectory() as work:
                start = time.perf_counter()
                report = recover(
                    pipe,
                    copy.deepcopy(teacher),
                    dict(heal, seed=seed),
                    calibration=CALIBRATION,
                    work=work,
                    exclude_prompts=excluded,
                )
                seconds.append(time.perf_counter() - start)
            scores, _ = evaluate(pipe, reference=dense_images)
            psnr.append(scores["psnr_vs_dense"])
            accuracy.append(scores["all"])
            kept.append(f"{report.kept_step}/{report.steps_run}")
        gain = statistics.mean(psnr) - one_shot["psnr_vs_dense"]
        heal_s = statistics.mean(seconds)
        print(
            f"| {label} | {prune_s:.1f} | {one_shot['psnr_vs_dense']:.2f} | {' / '.join(f'{p:.2f}' for p in psnr)} | "
            f"{gain:+.2f} | {one_shot['all']:.3f} | {' / '.join(f'{a:.3f}' for a in accuracy)} | {', '.join(kept)} | "
            f"{heal_s:.1f} | {heal_s / prune_s:.1f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
