"""Several processes under torchrun (gloo, CPU): the same pruned weights as one process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import distributed_job
import pytest
import torch
from conftest import invoke
from safetensors.torch import load_file

HERE = Path(__file__).parent
EXE = Path(sys.executable).parent / "obsdiff-hub"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*command, processes: int = 2) -> subprocess.CompletedProcess:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={processes}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *map(str, command)], capture_output=True, text=True, env=env, timeout=600)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    component = next((folder / c for c in ("unet", "transformer") if (folder / c).is_dir()), folder)
    return {k: v for f in sorted(component.glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_same_pruning(a: Path, b: Path) -> None:
    """Same removed heads/neurons and masks exactly; weights to fp32 noise. The Hessian sums are
    re-associated over ranks; one process alone differs from itself by up to 2.9e-5 per tensor
    (5e-6 over the model) between 1 and 2 threads, so: ≤ 1e-5 over the model, ≤ 1e-4 per tensor."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].shape == wb[name].shape, name  # the same heads and neurons removed
        assert torch.equal(wa[name] == 0, wb[name] == 0), name  # the same masks
        assert float((wa[name] - wb[name]).norm()) <= 1e-4 * max(float(wb[name].norm()), 1e-12), name
    delta = torch.cat([(wa[k].float() - wb[k].float()).flatten() for k in wa]).norm()
    assert float(delta) <= 1e-5 * float(torch.cat([wb[k].float().flatten() for k in wb]).norm())


@pytest.mark.parametrize("recipe", ["tiny-sdxl-structured-30", "tiny-sd3-unstructured-50"])
def test_two_processes_prune_a_pipeline_like_one(recipe, tmp_path):
    common = [
        "--recipe",
        recipe,
        "--set",
        "calibration.prompts.count=4",
        "--set",
        "calibration.batch_size=1",
        "--quiet",
    ]
    alone = invoke("prune", *common, "--out", tmp_path / "one")  # one process: this one
    assert alone.exit_code == 0, alone.output
    together = torchrun(EXE, "prune", *common, "--out", tmp_path / "two")
    assert together.returncode == 0, together.stderr[-3000:]
    assert together.stdout.strip().splitlines() == [str(tmp_path / "two")]  # rank 0 alone reports
    assert_same_pruning(tmp_path / "one", tmp_path / "two")
    report = (tmp_path / "two" / "report.json").read_text()
    assert '"world_size": 2' in report


def test_two_processes_through_the_calibration_callable(tmp_path):
    distributed_job.run(str(tmp_path / "one"))  # one process: this one
    together = torchrun(HERE / "distributed_job.py", tmp_path / "two")
    assert together.returncode == 0, together.stderr[-3000:]
    assert_same_pruning(tmp_path / "one", tmp_path / "two")


def test_a_failing_rank_ends_every_rank_with_no_output(tmp_path):
    failed = torchrun(HERE / "distributed_job.py", tmp_path / "out", "--fail-rank", "1")
    assert failed.returncode != 0
    assert "rank 1 cannot read its calibration data" in failed.stderr  # its own error
    assert "rank 1 failed while calibrating package 1" in failed.stderr  # and rank 0's
    assert not (tmp_path / "out").exists()
