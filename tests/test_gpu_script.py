"""The GPU benchmark script runs end to end at tiny sizes on the CPU, so it cannot rot before a GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


def test_the_gpu_script_passes_every_check_at_tiny_sizes_on_the_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "gpu.json").read_text())
    statuses = {name: check["status"] for name, check in record["checks"].items()}
    assert statuses == {**{name: "passed" for name in statuses}, "sparse_kernels": "skipped"}
    assert "needs CUDA" in record["checks"]["sparse_kernels"]["reason"]
    assert record["checks"]["calibration_dtypes"]["numbers"]["bfloat16"]["untouched_bit_identical"] is True
    assert all(entry["error_ratio"] <= 1.001 for entry in record["checks"]["solvers"]["numbers"].values())
    table = (tmp_path / "gpu.md").read_text()
    assert all(f"| {name} |" in table for name in statuses)
