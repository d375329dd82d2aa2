"""A bare-denoiser pruning job for the distributed tests: run it alone or under torchrun.

    python distributed_job.py OUT [--fail-rank R] [--granularity G]    (or distributed_job.run(OUT) in process)

Every rank runs the same calibration callable (a bare denoiser's trajectories are the
caller's); Hessians are summed over ranks and the solves shared. Rank 0 saves the result.
"""

import argparse
import os

import torch

import obsdiff_hub as oh
from obsdiff_hub import tiny


def run(out: str, fail_rank: int = -1, granularity: str = "structured") -> None:
    """The job: on one process when called, on every rank under torchrun."""
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    model = tiny.tiny_sd3_transformer().eval()
    batches = [tiny.example_inputs(model, 2, seed=i) for i in range(3)]

    def calibrate(m, set_step):
        if rank == fail_rank:
            raise RuntimeError(f"rank {rank} cannot read its calibration data")
        tiny.toy_calibration(batches, 3)(m, set_step)

    settings = {"granularity": granularity, "sparsity": 0.3, "packages": 2}
    result = oh.prune(model, settings, calibration=calibrate, steps=3)
    if rank == 0:
        oh.save_pruned(result.model, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--granularity", default="structured")
    args = parser.parse_args()
    run(args.out, args.fail_rank, args.granularity)
