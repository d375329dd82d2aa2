"""The README's main job, run as a user runs it: the installed command, in its own process."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_main_job_quiet_writes_grid_scores_and_card(tmp_path):
    """--quiet prints only the output path, nothing on stderr."""
    exe = Path(sys.executable).parent / "obsdiff-hub"
    out = tmp_path / "o"
    done = subprocess.run(
        [exe, "prune", "--recipe", "tiny-shapes-unstructured-50", "--out", out, "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "OBSDIFF_HUB_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{out}\n" and done.stderr == ""
    grid = Image.open(out / "samples.png")
    grid.verify()
    evaluation = json.loads((out / "eval.json").read_text())
    metrics = {m["name"]: m for m in evaluation["metrics"]}
    assert set(metrics) == {"caption_accuracy", "attribute_accuracy", "psnr_vs_dense"}
    for m in metrics.values():
        low, high = m["ci95"]
        assert m["samples"] == 60 and low <= m["pruned"] <= high
    assert metrics["caption_accuracy"]["pruned"] >= 0.5 and metrics["psnr_vs_dense"]["pruned"] > 15
    card = (out / "README.md").read_text()
    assert (
        "caption accuracy (shape, colour and size all right)" in card
        and "samples.png" in card
        and "95% interval" in card
    )
