"""Speed-up of N processes over one (torchrun, gloo on CPU or NCCL on GPUs), same recipe, same prompts.

Side by side in one invocation: one process with every core, one process with one thread,
and ``--processes`` ranks under torchrun (one thread each on CPU). Timed is the engine's
total (encoding, trajectories, Hessians, solves) from each run's report, so model loading
and process start-up are left out. Run:

    python benchmarks/distributed.py [--recipe tiny-sd3-unstructured-50] [--prompts 16] [--steps 10] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EXE = Path(sys.executable).parent / "obsdiff-hub"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str], threads: int, out: Path) -> float:
    done = subprocess.run(
        command + ["--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads((out / "report.json").read_text())["stages"]["total_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="tiny-sd3-unstructured-50")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    prune = [
        str(EXE),
        "prune",
        "--recipe",
        args.recipe,
        "--quiet",
        "--device",
        args.device,
        "--set",
        f"calibration.prompts.count={args.prompts}",
        "--set",
        f"calibration.steps={args.steps}",
        "--set",
        f"calibration.resolution={args.resolution}",
        "--set",
        "calibration.batch_size=1",
        "--packages",
        "1",
    ]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={args.processes}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
    ]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one_all = run(prune, cores, Path(tmp) / "a")
        one_single = run(prune, 1, Path(tmp) / "b")
        many = run(launcher + prune, max(1, cores // args.processes), Path(tmp) / "c")
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {cores} cores, torch {torch.__version__}, "
        f"{args.recipe}, "
        f"{args.prompts} prompts × {args.steps} steps at {args.resolution}², batch 1, 1 package"
    )
    print("| run | engine total (s) | speed-up over 1 process |")
    print("|---|---|---|")
    print(f"| 1 process, {cores} threads | {one_all:.2f} | 1.00× |")
    print(f"| 1 process, 1 thread | {one_single:.2f} | {one_all / one_single:.2f}× |")
    print(
        f"| {args.processes} processes (torchrun), {max(1, cores // args.processes)} thread(s) each | {many:.2f} | "
        f"{one_all / many:.2f}× |"
    )


if __name__ == "__main__":
    main()
