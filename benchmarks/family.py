"""A family run against the same members run one by one, side by side in one process.

The shipped shapes model, unstructured 30/40/50/60/70% at one module package (32 calibration
captions × 20 steps, CFG, batch 8): wall time of five ``prune`` calls against one
``prune_family`` call, the calibration time the family did not repeat, and a bit-for-bit check
of every member's weights against its single run.

Run:

    python benchmarks/family.py [--packages 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import obsdiff_hub as oh
from obsdiff_hub.shapes.pipeline import load_shapes_pipeline

RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7)
CALIBRATION = dict(prompts={"count": 32}, steps=20, guidance_scale=4.0, resolution=32, batch_size=8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, device {args.device}"
    )
    configs = [dict(granularity="unstructured", sparsity=r, packages=args.packages) for r in RATIOS]

    singles, single_s = [], 0.0
    for cfg in configs:
        pipe = load_shapes_pipeline()
        start = time.perf_counter()
        result = oh.prune(pipe, cfg, calibration=CALIBRATION, device=args.device)
        single_s += time.perf_counter() - start
        singles.append({k: v.clone() for k, v in result.model.state_dict().items()})

    members: list[dict[str, torch.Tensor]] = []
    shared = [0.0]

    def keep(index: int, result: oh.PruneResult) -> None:
        members.append({k: v.clone() for k, v in result.model.state_dict().items()})
        shared[0] += result.report.stages.get("calibration_shared_s", 0.0)

    pipe = load_shapes_pipeline()
    start = time.perf_counter()
    oh.prune_family(pipe, configs, keep, calibration=CALIBRATION, device=args.device)
    family_s = time.perf_counter() - start
    equal = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(members, singles))
    print(
        f"\n## {len(RATIOS)} unstructured sparsities ({', '.join(f'{round(r * 100)}%' for r in RATIOS)}), "
        f"{args.packages} package(s)\n"
    )
    print(
        "| five single runs (s) | one family run (s) | speed-up | calibration not repeated (s) | members equal to "
        "single runs, bit for bit |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {single_s:.1f} | {family_s:.1f} | {single_s / family_s:.2f}× | {shared[0]:.1f} | "
        f"{'yes' if equal else 'NO'} |"
    )


if __name__ == "__main__":
    main()
