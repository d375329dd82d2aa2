"""Offloaded pruning at the real SD3.5-Large and Flux.1-dev transformer configs (random bf16 weights), on a
machine whose memory is smaller than the model (see BENCHMARKS.md, "Offloading").

One run per process, so peak memory is its own: the base is written once as 2 GB safetensors shards of seeded
random bf16 weights (never whole in memory), opened lazily (:func:`obsdiff_hub.models.lazy.open_offloaded`),
calibrated through every block on 1 prompt × 2 steps with the trajectories a bare denoiser gets (random text
embeddings of the real widths, CFG batch of 2), pruned on the chosen blocks, saved shard by shard, and opened
again lazily to compare every tensor's shape with ``plan``'s. Reported: time per stage against the plan, peak RSS
(sampled every 20 ms) against the weights' size and the plan's prediction, what offloading cost.

    python benchmarks/offload.py sd35-large.transformer --blocks 0:1 --granularity unstructured --out /tmp/off
    python benchmarks/offload.py flux1-dev.transformer --blocks 0:1 --granularity structured --out /tmp/off

``--mode blocks`` keeps the blocks in host memory (use it on a GPU; ``--device cuda``, ``--cap-gb 24`` caps
device memory with ``torch.cuda.set_per_process_memory_fraction``); ``--resident`` runs without offloading, for
the time on the same device.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from full_scale import PeakMemory, rss_bytes  # noqa: E402  (benchmarks/full_scale.py)

import obsdiff_hub as oh  # noqa: E402
from obsdiff_hub.architectures.inputs import example_inputs, run_denoiser  # noqa: E402
from obsdiff_hub.models import build_model  # noqa: E402
from obsdiff_hub.models.lazy import open_offloaded  # noqa: E402
from obsdiff_hub.pruning.config import PruneConfig  # noqa: E402
from obsdiff_hub.pruning.plan import builtin_config, planned_structure  # noqa: E402

SHARD = 2 * 1024**3
GiB = 1024**3


def write_base(config_name: str, folder: Path, seed: int = 0) -> int:
    """The public config with seeded random bf16 weights, one 2 GB shard in memory at a time; returns bytes."""
    config = builtin_config(config_name)
    if (folder / "done.json").is_file():
        return json.loads((folder / "done.json").read_text())["bytes"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    state = build_model(config).state_dict()  # meta: names and shapes
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in state.items():
        if shards[-1] and size + tensor.numel() * 2 > SHARD:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += tensor.numel() * 2
    generator = torch.Generator().manual_seed(seed)
    total = 0
    for i, names in enumerate(shards, 1):
        tensors = {}
        for name in names:
            fan_in = state[name].shape[-1] if state[name].ndim > 1 else 1
            value = torch.randn(state[name].shape, generator=generator) / fan_in**0.5
            tensors[name] = value.to(torch.bfloat16)
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, str(folder / f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"))
        del tensors
    (folder / "done.json").write_text(json.dumps({"bytes": total}))
    return total


def trajectories(skeleton: torch.nn.Module, resolution: int, steps: int, device: torch.device):
    """A bare denoiser's calibration: ``steps`` denoiser calls on one CFG batch at ``resolution``."""
    inputs = example_inputs(skeleton, batch=2, seed=1, latent_size=resolution // 8, tokens=77)
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else {kk: vv.to(device) for kk, vv in v.items()}
        for k, v in inputs.items()
    }

    def calibrate(model: torch.nn.Module, set_step: Any) -> None:
        for step in range(steps):
            set_step(step)
            run_denoiser(model, inputs, 1000.0 * (1 - step / steps))

    return calibrate


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and args.cap_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * GiB / total), device)
    weights = write_base(args.config, args.out / "base")
    peaks = PeakMemory()
    start_rss = rss_bytes()
    settings = dict(granularity=args.granularity, sparsity=args.sparsity, blocks=args.blocks, packages="auto")
    settings["offload"] = "none" if args.resident else args.mode
    t0 = time.perf_counter()
    peaks.mark("open")
    if args.resident:
        cls = oh.OBSDiffFluxTransformer if "flux" in args.config else oh.OBSDiffSD3Transformer
        model = cls.from_pretrained(args.out / "base", torch_dtype=torch.bfloat16).to(device)
    else:
        model = open_offloaded(args.out / "base", args.mode, args.out / "offload", device=device)
    opened = time.perf_counter() - t0
    skeleton = build_model(json.loads((args.out / "base" / "config.json").read_text()))
    planned = planned_structure(skeleton, PruneConfig.coerce(settings)) if args.granularity == "structured" else {}
    calibrate = trajectories(skeleton, args.resolution, args.steps, device)
    peaks.mark("prune")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = oh.prune(
        model, settings, calibration=calibrate, steps=args.steps, device=device, offload_folder=args.out / "offload"
    )
    pruned_s = time.perf_counter() - t0
    peaks.mark("save")
    t0 = time.perf_counter()
    saved = oh.save_pruned(result.model, args.out / "pruned", overwrite=True, max_shard_size="2GB")
    saved_s = time.perf_counter() - t0
    peaks.mark("reopen")
    reopened = open_offloaded(saved, "blocks-to-disk", args.out / "reopened")
    shapes_match = (
        not planned
        or all(reopened.config["obsdiff_structure"].get(k, v) == v for k, v in planned.items())
        and set(planned) <= set(reopened.config["obsdiff_structure"])
    )
    memory = peaks.stop()
    report = result.report
    peak = max(memory.values())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"{round(rss_total() / GiB)} GiB memory, device {device}",
        "config": args.config,
        "mode": settings["offload"],
        "granularity": args.granularity,
        "blocks": args.blocks,
        "weights_bytes": weights,
        "open_s": opened,
        "prune_s": pruned_s,
        "stages_s": report.stages,
        "save_s": saved_s,
        "package_plan": report.package_plan,
        "peak_rss_above_start_bytes": peak - start_rss,
        "peak_rss_over_weights": (peak - start_rss) / weights,
        "peak_rss_by_stage": {k: v - start_rss for k, v in memory.items()},
        "predicted_peak_bytes": report.package_plan.get("predicted_peak_bytes"),
        "peak_device_bytes": report.peak_memory_bytes if device.type == "cuda" else None,
        "params": [report.params_before, report.params_after],
        "saved_shapes_match_plan": shapes_match,
    }


def rss_total() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", help="a shipped config: sd35-large.transformer, flux1-dev.transformer, ...")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", default="blocks-to-disk", choices=["blocks", "blocks-to-disk"])
    parser.add_argument("--resident", action="store_true")
    parser.add_argument("--granularity", default="unstructured")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--blocks", default="0:1")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cap-gb", type=float, default=None)
    args = parser.parse_args()
    record = run(args)
    print(json.dumps(record, indent=2, default=str))
    (args.out / f"{args.config}.{record['mode']}.json").write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
