"""What a user gets from the CLI: every shapes recipe pruned and evaluated, and ``bench`` on structured models.

Runs the commands a user runs (``obsdiff-hub prune`` with each recipe's own ``evaluation``
section, ``obsdiff-hub bench``) in a temporary folder and prints the tables of eval.json
(value, bootstrap 95% interval, sample count) and bench.json (median latency dense vs
pruned, parameters, FLOPs). Run:

    python benchmarks/zoo_eval.py [--repeats 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EXE = Path(sys.executable).parent / "obsdiff-hub"
SHAPES = ["tiny-shapes-unstructured-50", "tiny-shapes-2of4", "tiny-shapes-structured-30"]
# (label, recipe, overrides, bench resolution)
BENCHED = [
    ("shapes structured 30%", "tiny-shapes-structured-30", [], 32),
    ("tiny SDXL structured 30%", "tiny-sdxl-structured-30", [], 128),
    (
        "tiny SD3 structured 30%",
        "tiny-sd3-unstructured-50",
        ["--set", "prune.granularity=structured", "--set", "prune.sparsity=0.3"],
        64,
    ),
]


def cli(*args: str) -> None:
    subprocess.run([str(EXE), *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        print("| recipe | metric | dense | pruned | 95% interval | samples |\n|---|---|---|---|---|---|")
        for recipe in SHAPES:
            out = Path(tmp) / recipe
            cli("prune", "--recipe", recipe, "--out", str(out), "--device", args.device, "--quiet")
            for m in json.loads((out / "eval.json").read_text())["metrics"]:
                dense = "–" if m.get("dense") is None else f"{m['dense']:.3f}"
                low, high = m["ci95"]
                print(
                    f"| {recipe} | {m['label']} | {dense} | {m['pruned']:.3f} | [{low:.3f}, {high:.3f}] | "
                    f"{m['samples']} |",
                    flush=True,
                )
        print(
            "\n| model | resolution | dense forward (ms) | pruned forward (ms) | speed-up | median block speed-up "
            "| params | FLOPs |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, recipe, overrides, resolution in BENCHED:
            out = Path(tmp) / f"bench-{recipe}"
            cli("prune", "--recipe", recipe, *overrides, "--out", str(out), "--device", args.device, "--quiet")
            cli(
                "bench",
                "--model",
                str(out),
                "--resolution",
                str(resolution),
                "--repeats",
                str(args.repeats),
                "--device",
                args.device,
            )
            b = json.loads((out / "bench.json").read_text())
            d = b["denoiser"]
            blocks = sorted(x["speedup"] for x in b["blocks"])
            params, flops = b["params"], b["flops"]
            print(
                f"| {label} | {resolution}² | {d['dense']['median_ms']:.2f} | {d['pruned']['median_ms']:.2f} | "
                f"{d['speedup']:.2f}× | "
                f"{blocks[len(blocks) // 2]:.2f}× | {params['dense'] / 1e6:.3f} M → {params['pruned'] / 1e6:.3f} M | "
                f"{flops['dense'] / 1e9:.3f} → {flops['pruned'] / 1e9:.3f} GFLOPs "
                f"({100 * (flops['pruned'] / flops['dense'] - 1):+.1f}%) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
