"""How long the command line takes to answer before any work: ``--help``, ``--version``, a usage
error, a command's ``-h``, and ``import obsdiff_hub``. Target: under 2 s each (they load neither
torch nor diffusers). Median of ``--repeats`` fresh processes each. Run:

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

EXE = str(Path(sys.executable).parent / "obsdiff-hub")
CASES = {
    "obsdiff-hub --help": [EXE, "--help"],
    "obsdiff-hub --version": [EXE, "--version"],
    "obsdiff-hub prune --no-such-option (usage error)": [EXE, "prune", "--no-such-option"],
    "obsdiff-hub eval -h": [EXE, "eval", "-h"],
    "python -c 'import obsdiff_hub'": [sys.executable, "-c", "import obsdiff_hub"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, {date.today()}, median "
        f"of {args.repeats}"
    )
    print("| what | seconds |\n|---|---|")
    for label, command in CASES.items():
        seconds(command)  # warm the file cache
        print(f"| `{label}` | {statistics.median(seconds(command) for _ in range(args.repeats)):.2f} |")


if __name__ == "__main__":
    main()
