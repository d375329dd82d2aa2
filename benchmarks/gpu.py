"""Every CUDA path proven and the real speed measured, in one command (see BENCHMARKS.md, "On a GPU").

Checks, in order, each recorded as passed / failed / skipped with its numbers and seconds:

- ``calibration_dtypes``: fp16 and bf16 models calibrated in their own dtype; every weight the run
  does not prune is bit-identical, the pruned ones are exactly 50% zeros, in the model's dtype.
- ``hessian_precision``: fp32 / TF32 / bf16 accumulation against an fp64 Hessian.
- ``hessian_device_cpu``: ``hessian_device: cpu`` (sums in host memory, products on the device)
  against sums on the device: same masks, weights within float summation order.
- ``structured_round_trip``: a structured tiny SDXL saved and reloaded on the device, bit for bit.
- ``bench_events``: ``bench`` of that checkpoint against its base (CUDA events on a GPU).
- ``sparse_kernels``: a 2:4 Linear at real width with and without semi-structured kernels
  (CUDA, compute capability ≥ 8.0): outputs and speed.
- ``solvers``: ``obs_prune`` against the SparseGPT-style baseline and the ADMM refinement at
  1280×5120 and 2432×9728, 50% and 2:4 (fp32, and TF32 on CUDA).
- ``real_run``: ``sdxl-30`` on the real config, random fp16 weights, 4 prompts × 10 steps at 1024²:
  time per stage and peak device memory against the plan's prediction.
- ``block_speed``: the SD3.5-Large transformer dense against a 30%-per-coupling structured one,
  per block and whole, fp16 at 1024².
- ``offload``: ``prune.offload`` on the device. Tiny: blocks and blocks-to-disk against the resident
  run, bit for bit. Real (``benchmarks/offload.py``): Flux.1-dev (random bf16 weights) structured 30%
  with ``blocks`` under a 24 GB device cap, peak device memory; SD3.5-Large resident against ``blocks``,
  the time offloading costs.

``--quick`` shrinks the solver shapes and the real run (under 3 minutes on an H100-class GPU);
``--tiny`` runs everything at tiny sizes (the CPU run the test suite makes, under 2 minutes).
Writes ``gpu.json`` and ``gpu.md`` (a table for BENCHMARKS.md) into ``--out``.

    python benchmarks/gpu.py --out results/ [--quick] [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))

from solvers import error, problem, sparsegpt_baseline, timed  # noqa: E402  (benchmarks/solvers.py)

import obsdiff_hub as oh  # noqa: E402
from obsdiff_hub import tiny  # noqa: E402
from obsdiff_hub.architectures import architecture_of  # noqa: E402
from obsdiff_hub.architectures.sparse_kernels import enable_sparse_kernels  # noqa: E402
from obsdiff_hub.architectures.surgery import structure_of  # noqa: E402
from obsdiff_hub.errors import UnsupportedEnvironmentError  # noqa: E402
from obsdiff_hub.maths.admm import AdmmSettings, refine  # noqa: E402
from obsdiff_hub.maths.hessian import HessianAccumulator  # noqa: E402
from obsdiff_hub.maths.obs import obs_prune_shared  # noqa: E402
from obsdiff_hub.models import build_model  # noqa: E402
from obsdiff_hub.pruning.plan import builtin_config  # noqa: E402


class Skipped(Exception):
    """A check that cannot run here (it needs CUDA); not a failure."""


def on(device: torch.device, inputs: dict[str, Any]) -> dict[str, Any]:
    """Forward inputs (tensors, and dicts of them) moved to ``device``."""
    return {
        k: v.to(device) if torch.is_tensor(v) else on(device, v) if isinstance(v, dict) else v
        for k, v in inputs.items()
    }


def targeted(model: torch.nn.Module) -> set[str]:
    architecture = architecture_of(model)
    return {f"{p}.weight" for u in architecture.units(model, None, False) for s in u.sites for p in s.layers}


def calibration_dtypes(device: torch.device, tiny_run: bool, quick: bool) -> dict[str, Any]:
    results = {}
    for dtype in (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.bfloat16,):
        torch.manual_seed(0)
        model = tiny.tiny_sd3_transformer().to(dtype).eval()
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        cal = tiny.toy_calibration([on(device, tiny.example_inputs(model, 2))], 2)
        pruned = oh.prune(
            model, dict(granularity="unstructured", sparsity=0.5), calibration=cal, steps=2, device=device, dtype=dtype
        ).model
        after = {k: v.detach().cpu() for k, v in pruned.state_dict().items()}
        touched = targeted(pruned)
        untouched_equal = all(torch.equal(after[k], before[k].cpu()) for k in after if k not in touched)
        zeros = [float((after[k] == 0).float().mean()) for k in touched]
        ok = (
            untouched_equal and all(abs(z - 0.5) < 1e-6 for z in zeros) and all(after[k].dtype == dtype for k in after)
        )
        results[str(dtype).removeprefix("torch.")] = {
            "untouched_bit_identical": untouched_equal,
            "zeros_min": min(zeros),
            "zeros_max": max(zeros),
            "passed": ok,
        }
    return results


def hessian_precision(device: torch.device, tiny_run: bool, quick: bool) -> dict[str, Any]:
    d, n = (256, 1024) if tiny_run else (2048, 8192)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g)
    X = X + 0.5 * X.roll(1, 1)
    reference = 2 * X.double().T @ X.double() / n
    bounds = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 2e-2}
    results = {}
    for precision, bound in bounds.items():
        acc = HessianAccumulator(d, device=device, precision=precision)  # type: ignore[arg-type]
        seconds, _ = timed(lambda: acc.add(X.to(device)), device)
        error = float((acc.hessian().double().cpu() - reference).norm() / reference.norm())
        results[precision] = {"relative_error": error, "bound": bound, "seconds": seconds, "passed": error <= bound}
    return results


def _tiny_prune(device: torch.device, **settings: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = tiny.tiny_sd3_transformer().eval()
    cal = tiny.toy_calibration([on(device, tiny.example_inputs(model, 2))], 2)
    pruned = oh.prune(
        model, dict(granularity="unstructured", sparsity=0.5, **settings), calibration=cal, steps=2, device=device
    ).model
    return {k: v.detach().cpu() for k, v in pruned.state_dict().items()}


def hessian_device_cpu(device: torch.device, tiny_run: bool, quick: bool) -> dict[str, Any]:
    resident, host = _tiny_prune(device), _tiny_prune(device, hessian_device="cpu")
    masks_equal = all(torch.equal(resident[k] == 0, host[k] == 0) for k in resident)
    diff = max(float((resident[k] - host[k]).abs().max()) for k in resident)
    return {"masks_equal": masks_equal, "max_weight_difference": diff, "passed": masks_equal and diff < 1e-4}


def structured_round_trip(device: torch.device, tiny_run: bool, quick: bool, folder: Path) -> dict[str, Any]:
    from obsdiff_hub.zoo.recipes import load_recipe
    from obsdiff_hub.zoo.runs import Overrides, run_recipe

    output = run_recipe(
        load_recipe("tiny-sdxl-structured-30"), folder / "structured", Overrides(num_prompts=2), device=str(device)
    )
    model = output.result.model
    reloaded = oh.OBSDiffUNet.from_pretrained(output.directory, subfolder="unet").to(device)
    mine, theirs = model.state_dict(), reloaded.state_dict()
    equal = mine.keys() == theirs.keys() and all(torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine)
    return {"bit_identical": equal, "params": sum(p.numel() for p in reloaded.parameters()), "passed": equal}


def bench_events(device: torch.device, tiny_run: bool, quick: bool, folder: Path) -> dict[str, Any]:
    from obsdiff_hub.zoo.bench import bench

    result = bench(
        str(folder / "structured"),
        "builtin:tiny-sdxl",
        device=device,
        repeats=3,
        warmup=1,
        resolution=32 if tiny_run else None,
    )
    return {
        "device": result.device,
        "dense_ms": result.dense.denoiser.median_ms,
        "pruned_ms": result.pruned.denoiser.median_ms,
        "speedup": result.speedup,
        "passed": result.pruned.denoiser.median_ms > 0,
    }


def sparse_kernels(device: torch.device, tiny_run: bool, quick: bool) -> dict[str, Any]:
    width = 256 if tiny_run else 4096
    linear = torch.nn.Linear(width, width, bias=False)
    ((W, _),) = obs_prune_shared([linear.weight.detach()], torch.eye(width), 0.5, 2, 4)
    linear.weight = torch.nn.Parameter(W)
    if device.type != "cuda":
        try:
            enable_sparse_kernels(torch.nn.Sequential(linear))
        except UnsupportedEnvironmentError as error:
            raise Skipped(f"needs CUDA (refused cleanly here: {error})") from None
        return {"passed": False, "reason": "sparse kernels were enabled without CUDA"}
    dense = torch.nn.Sequential(linear).to(device, torch.float16).eval()
    sparse = torch.nn.Sequential(torch.nn.Linear(width, width, bias=False)).to(device, torch.float16)
    sparse[0].weight = torch.nn.Parameter(dense[0].weight.detach().clone())
    converted = enable_sparse_kernels(sparse)
    x = torch.randn(8192, width, device=device, dtype=torch.float16)
    with torch.no_grad():
        error = float((sparse(x) - dense(x)).norm() / dense(x).norm())
        for m in (dense, sparse):
            m(x)
        dense_s, _ = timed(lambda: [dense(x) for _ in range(20)], device)
        sparse_s, _ = timed(lambda: [sparse(x) for _ in range(20)], device)
    return {
        "converted": converted,
        "relative_error": error,
        "dense_ms": dense_s * 50,
        "sparse_ms": sparse_s * 50,
        "speedup": dense_s / sparse_s,
        "passed": error < 1e-2,
    }


def solvers(device: torch.device, tiny_run: bool, quick: bool) -> dict[str, Any]:
    shapes = [(64, 256)] if tiny_run else [(1280, 5120)] if quick else [(1280, 5120), (2432, 9728)]
    results: dict[str, Any] = {}
    for rows, cols in shapes:
        W, H = problem(rows, cols, device)
        for label, (n, m) in (("50%", (0, 0)), ("2:4", (2, 4))):
            obs_s, (Wo, mask) = timed(lambda: obs_prune_shared([W], H, 0.5, n, m)[0], device)
            base_s, Wb = timed(lambda: sparsegpt_baseline(W, H, 0.5, n, m), device)
            admm_s, refined = timed(
                lambda: refine([W], H, [Wo], [mask], search=True, n=n, m=m, settings=AdmmSettings()), device
            )
            entry = {
                "obs_s": obs_s,
                "baseline_s": base_s,
                "speedup": base_s / obs_s,
                "admm_s": admm_s,
                "error_ratio": error(W, Wo, H) / error(W, Wb, H),
                "admm_error_ratio": error(W, refined[0][0], H) / error(W, Wo, H),
            }
            if device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = True
                entry["obs_tf32_s"], _ = timed(lambda: obs_prune_shared([W], H, 0.5, n, m)[0], device)
                torch.backends.cuda.matmul.allow_tf32 = False
            entry["passed"] = entry["error_ratio"] <= 1.001 and entry["admm_error_ratio"] <= 1.0 + 1e-9
            results[f"{rows}x{cols} {label}"] = entry
    return results


def real_run(device: torch.device, tiny_run: bool, quick: bool) -> dict[str, Any]:
    if tiny_run:
        pipe, settings = tiny.tiny_sdxl_pipeline(), dict(granularity="structured", sparsity=0.3, packages=1)
        calibration = dict(prompts={"count": 2}, batch_size=2, steps=2, resolution=32)
    else:
        from full_scale import build_pipeline

        from obsdiff_hub.zoo.recipes import load_recipe

        recipe = load_recipe("sdxl-30")
        pipe = build_pipeline(recipe)
        settings = recipe.prune.model_copy(update={"packages": "auto"})
        count, steps, resolution = (2, 4, 512) if quick else (4, 10, 1024)
        calibration = recipe.calibration.model_copy(
            update={
                "prompts": recipe.calibration.prompts.model_copy(update={"count": count}),
                "steps": steps,
                "resolution": resolution,
                "batch_size": 1,
            }
        )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, result = timed(lambda: oh.prune(pipe, settings, calibration=calibration, device=device), device)
    report = result.report
    peak = report.peak_memory_bytes
    predicted = report.package_plan.get("predicted_peak_bytes", 0)
    return {
        "seconds": seconds,
        "stages_s": report.stages,
        "packages": report.package_plan.get("packages"),
        "peak_bytes": peak,
        "predicted_peak_bytes": predicted,
        "peak_over_prediction": peak / predicted if predicted else None,
        "params": [report.params_before, report.params_after],
        "passed": report.params_after < report.params_before,
    }


def block_speed(device: torch.device, tiny_run: bool, quick: bool) -> dict[str, Any]:
    from obsdiff_hub.zoo.bench import measure

    config = (
        {**tiny.tiny_sd3_transformer().config, "_class_name": "SD3Transformer2DModel"}
        if tiny_run
        else builtin_config("sd35-large.transformer")
    )
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    skeleton = build_model(dict(config))
    structure = {
        k: max(1, round(v * 0.7)) for k, v in structure_of(skeleton, architecture_of(skeleton)).items()
    }  # 30% of every coupling
    latent = 8 if tiny_run else 128
    results = {}
    for which, shape in (("dense", None), ("pruned", structure)):
        model = build_model(dict(config), structure=shape, empty=False).to(device, dtype).eval()
        measured = measure(
            model,
            {**model.config, "_class_name": config["_class_name"]},
            device,
            latent_size=latent,
            batch=1,
            warmup=1 if tiny_run else 3,
            repeats=3 if tiny_run else 10,
        )
        results[which] = measured
        del model
    blocks = {
        b: results["dense"].blocks[b].median_ms / results["pruned"].blocks[b].median_ms
        for b in results["dense"].blocks
    }
    return {
        "dense_ms": results["dense"].denoiser.median_ms,
        "pruned_ms": results["pruned"].denoiser.median_ms,
        "speedup": results["dense"].denoiser.median_ms / results["pruned"].denoiser.median_ms,
        "block_speedup_median": sorted(blocks.values())[len(blocks) // 2],
        "params": [results["dense"].params, results["pruned"].params],
        "passed": results["pruned"].params < results["dense"].params,
    }


def offload(device: torch.device, tiny_run: bool, quick: bool, folder: Path) -> dict[str, Any]:
    if tiny_run:
        results = {}
        for mode in ("none", "blocks", "blocks-to-disk"):
            torch.manual_seed(0)
            model = tiny.tiny_sd3_transformer().eval()
            cal = tiny.toy_calibration([on(device, tiny.example_inputs(model, 2))], 2)
            settings = dict(granularity="structured", sparsity=0.4, packages=2, offload=mode)
            result = oh.prune(model, settings, calibration=cal, steps=2, device=device, offload_folder=folder / mode)
            offloaded = getattr(result.model, "_obsdiff_offload", None)
            names = list(result.model.state_dict())
            state = offloaded.read(result.model, names) if offloaded else result.model.state_dict()
            results[mode] = {k: v.detach().cpu() for k, v in state.items()}
        equal = all(
            all(torch.equal(results[mode][k], results["none"][k]) for k in results["none"])
            for mode in ("blocks", "blocks-to-disk")
        )
        return {"bit_identical": equal, "passed": equal}
    from offload import run as offloaded_run  # benchmarks/offload.py

    def args(config: str, **changes: Any) -> argparse.Namespace:
        settings = dict(
            config=config,
            out=folder / config,
            mode="blocks",
            resident=False,
            granularity="structured",
            sparsity=0.3,
            blocks="0:1",
            resolution=512 if quick else 1024,
            steps=2,
            device=str(device),
            cap_gb=None,
        )
        return argparse.Namespace(**{**settings, **changes})

    flux = offloaded_run(args("flux1-dev.transformer", cap_gb=24))
    sd35 = {
        which: offloaded_run(args("sd35-large.transformer", granularity="unstructured", resident=which == "resident"))
        for which in ("resident", "blocks")
    }
    return {
        "flux_peak_device_gb": flux["peak_device_bytes"] / 1024**3,
        "flux_prune_s": flux["prune_s"],
        "flux_shapes_match_plan": flux["saved_shapes_match_plan"],
        "sd35_resident_s": sd35["resident"]["prune_s"],
        "sd35_blocks_s": sd35["blocks"]["prune_s"],
        "sd35_offload_cost": sd35["blocks"]["prune_s"] / sd35["resident"]["prune_s"],
        "passed": flux["peak_device_bytes"] <= 24 * 1024**3 and flux["saved_shapes_match_plan"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated check names")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": _driver(),
        "python": platform.python_version(),
        "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
    }
    records: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checks: dict[str, Callable[[], dict[str, Any]]] = {
            "calibration_dtypes": lambda: calibration_dtypes(device, args.tiny, args.quick),
            "hessian_precision": lambda: hessian_precision(device, args.tiny, args.quick),
            "hessian_device_cpu": lambda: hessian_device_cpu(device, args.tiny, args.quick),
            "structured_round_trip": lambda: structured_round_trip(device, args.tiny, args.quick, folder),
            "bench_events": lambda: bench_events(device, args.tiny, args.quick, folder),
            "sparse_kernels": lambda: sparse_kernels(device, args.tiny, args.quick),
            "solvers": lambda: solvers(device, args.tiny, args.quick),
            "real_run": lambda: real_run(device, args.tiny, args.quick),
            "block_speed": lambda: block_speed(device, args.tiny, args.quick),
            "offload": lambda: offload(device, args.tiny, args.quick, folder),
        }
        chosen = [c for c in args.only.split(",") if c] or list(checks)
        for name in chosen:
            start = time.perf_counter()
            try:
                numbers = checks[name]()
                passed = all(v.get("passed", True) for v in numbers.values() if isinstance(v, dict)) and numbers.get(
                    "passed", True
                )
                records[name] = {
                    "status": "passed" if passed else "failed",
                    "seconds": time.perf_counter() - start,
                    "numbers": numbers,
                }
            except Skipped as reason:
                records[name] = {"status": "skipped", "seconds": time.perf_counter() - start, "reason": str(reason)}
            except Exception as failure:  # a failed check is recorded and the others still run
                records[name] = {
                    "status": "failed",
                    "seconds": time.perf_counter() - start,
                    "error": f"{type(failure).__name__}: {failure}",
                    "traceback": traceback.format_exc(),
                }
            print(f"{name}: {records[name]['status']} ({records[name]['seconds']:.1f} s)", flush=True)
    (args.out / "gpu.json").write_text(json.dumps({**header, "checks": records}, indent=2, default=str) + "\n")
    lines = [
        f"{header['device']}, torch {header['torch']} (CUDA {header['cuda']}, driver {header['driver']}), "
        f"{header['date']}, {header['mode']} run",
        "",
        "| check | status | s | numbers |",
        "|---|---|---|---|",
    ]
    for name, record in records.items():
        detail = json.dumps(record.get("numbers", record.get("reason", record.get("error", ""))), default=str)
        lines.append(f"| {name} | {record['status']} | {record['seconds']:.1f} | {detail[:400]} |")
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if all(r["status"] != "failed" for r in records.values()) else 1)


def _driver() -> str | None:
    try:
        return (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
