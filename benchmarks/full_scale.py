"""The zoo recipes at their real shapes: public configs, seeded random weights, the smallest
calibration that exercises every stage.

Each recipe runs in its own process (so peak memory is its own): the denoiser is built from
the shipped public config (``recipes/configs``) with seeded random weights in the checkpoint's
dtype (SDXL's main branch is fp32, SD3-Medium's fp16), next to small text encoders whose
output widths are exactly what the denoiser reads and a small VAE with the real latent
channels and scale factor. It is pruned with the recipe's own settings except the calibration
(1 prompt, 2 steps, 256², CFG on), saved with ``save_pruned`` and reloaded with
``from_pretrained``; the reloaded parameter count must equal SPEC §4.

Reported per stage: time (trajectories are the denoiser passes without the hooks; Hessian
accumulation the time inside the hooks), peak resident memory (sampled every 20 ms) next to
the engine's prediction (model + largest package's Hessians + largest solve), and the
parameter count. Run:

    python benchmarks/full_scale.py [RECIPE ...] [--packages auto|N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

RECIPES = ["sdxl-30", "sd3-medium-25", "sd3-medium-unstructured-50"]
CHECKPOINT_DTYPE = {"unet": torch.float32, "mmdit": torch.float16}  # SDXL main branch fp32, SD3-Medium fp16
SPEC_PARAMS = {"sdxl-30": 1.91, "sd3-medium-25": 1.72, "sd3-medium-unstructured-50": 2.03}  # billions, SPEC §4


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples the resident set size in the background; ``mark(stage)`` starts a new stage."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.stage = "start"
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss_bytes())
            time.sleep(0.02)

    def mark(self, stage: str) -> None:
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss_bytes())
        self.stage = stage

    def stop(self) -> dict[str, int]:
        self.mark("end")
        self.running = False
        self.thread.join()
        return self.peaks


def small_clip(hidden: int, projection: int | None, vocab: int):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from obsdiff_hub.tiny import clip_text_config

    config = clip_text_config(hidden, projection or hidden, vocab, heads=4)
    config.num_hidden_layers = 1
    config.intermediate_size = 256
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_pipeline(recipe):
    """The recipe's pipeline class around the real-config denoiser (random weights)."""
    import diffusers
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
    )
    from transformers import T5Config, T5EncoderModel

    from obsdiff_hub.models import build_model
    from obsdiff_hub.pruning.plan import builtin_config
    from obsdiff_hub.tiny import make_clip_tokenizer, make_t5_tokenizer

    torch.manual_seed(0)
    config = builtin_config(recipe.base_model.config)
    denoiser = build_model(config, empty=False).eval().to(CHECKPOINT_DTYPE[recipe.base_model.family])
    latent_channels = config.get("in_channels", 4)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
    )
    tokenizer = make_clip_tokenizer()
    vocab = len(tokenizer)
    cls = getattr(diffusers, recipe.base_model.pipeline)
    if recipe.base_model.family == "unet":  # SDXL: CLIP-L (768) and CLIP-bigG (1280, pooled 1280)
        return cls(
            vae=vae,
            text_encoder=small_clip(768, None, vocab),
            text_encoder_2=small_clip(1280, 1280, vocab),
            tokenizer=tokenizer,
            tokenizer_2=make_clip_tokenizer(),
            unet=denoiser,
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
            ),
        )
    t5_tokenizer = make_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=config["joint_attention_dim"],
            d_kv=64,
            d_ff=256,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    return cls(
        transformer=denoiser,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=small_clip(768, 768, vocab),
        tokenizer=tokenizer,
        text_encoder_2=small_clip(1280, 1280, vocab),
        tokenizer_2=make_clip_tokenizer(),
        text_encoder_3=t5.eval(),
        tokenizer_3=t5_tokenizer,
    )


def run_one(name: str, packages: str, device: str) -> dict:
    import obsdiff_hub as oh
    from obsdiff_hub.architectures.components import denoiser_of
    from obsdiff_hub.zoo.recipes import load_recipe

    memory = PeakMemory()
    baseline = rss_bytes()
    recipe = load_recipe(name)
    t0 = time.perf_counter()
    memory.mark("build")
    pipe = build_pipeline(recipe)
    build_s = time.perf_counter() - t0
    config = recipe.prune.model_copy(update={"packages": packages if packages == "auto" else int(packages)})
    calibration = recipe.calibration.model_copy(
        update={
            "prompts": recipe.calibration.prompts.model_copy(update={"count": 1}),
            "steps": 2,
            "resolution": 256,
            "batch_size": 1,
        }
    )
    memory.mark("prune")
    after_build = rss_bytes()
    denoiser_bytes = sum(p.numel() * p.element_size() for p in denoiser_of(pipe).parameters())
    result = oh.prune(pipe, config, calibration=calibration, device=device)
    report = result.report
    with tempfile.TemporaryDirectory(dir=os.environ.get("FULL_SCALE_TMP")) as tmp:
        memory.mark("save")
        t0 = time.perf_counter()
        out = oh.save_pruned(denoiser_of(pipe), Path(tmp) / "ckpt", torch_dtype=torch.float16)
        save_s = time.perf_counter() - t0
        del pipe, result
        memory.mark("reload")
        t0 = time.perf_counter()
        cls = oh.OBSDiffUNet if recipe.base_model.family == "unet" else oh.OBSDiffSD3Transformer
        reloaded = cls.from_pretrained(out, dtype=torch.float16)
        reload_s = time.perf_counter() - t0
        params = sum(p.numel() for p in reloaded.parameters())
    peaks = memory.stop()
    plan = report.package_plan
    return {
        "recipe": name,
        "packages": plan["packages"],
        "mode": plan["mode"],
        "hessian_gb_total": plan["hessian_bytes_total"] / 1e9,
        "build_s": build_s,
        "trajectories_s": report.stages["trajectories_s"],
        "hessian_s": report.stages["hessian_accumulation_s"],
        "solve_s": report.stages["solve_s"],
        "encode_s": report.stages.get("prompt_encoding_s", 0.0),
        "save_s": save_s,
        "reload_s": reload_s,
        "per_package": [(p.calibration_s - p.hessian_s, p.hessian_s, p.solve_s) for p in report.packages],
        "baseline_rss_gb": baseline / 1e9,
        "after_build_rss_gb": after_build / 1e9,
        "peak_rss_gb": {k: v / 1e9 for k, v in peaks.items()},
        # the process as built, with the denoiser as the engine holds it (compute dtype) plus the plan's needs
        "predicted_peak_gb": (after_build - denoiser_bytes + plan["predicted_peak_bytes"]) / 1e9,
        "predicted_extra_gb": (plan["hessian_bytes_largest_package"] + plan["solve_workspace_bytes"]) / 1e9,
        "measured_extra_gb": (peaks.get("prune", 0) - after_build) / 1e9,
        "params_b": params / 1e9,
        "spec_params_b": SPEC_PARAMS[name],
        "dtype": report.precision,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipes", nargs="*", default=RECIPES)
    parser.add_argument("--packages", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(args.recipes[0], args.packages, args.device)), flush=True)
        return
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"device {args.device}, "
        "1 prompt × 2 steps at 256², CFG, batch 1",
        flush=True,
    )
    results = []
    for name in args.recipes:
        done = subprocess.run(
            [sys.executable, __file__, name, "--child", "--packages", args.packages, "--device", args.device],
            capture_output=True,
            text=True,
        )
        line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{done.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(line.removeprefix("RESULT ")))
        print(json.dumps(results[-1]), flush=True)
    print(
        "| recipe | packages | trajectories (s) | Hessians (s) | Hessians / trajectories (worst package) | solves "
        "(s) | save (s) | reload (s) "
        "| peak RSS (GB) | predicted (GB) | measured / predicted | params after (B) | SPEC §4 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        worst = max(h / t for t, h, _ in r["per_package"])
        peak = r["peak_rss_gb"].get("prune", 0)
        print(
            f"| {r['recipe']} | {r['packages']} ({r['mode']}) | {r['trajectories_s']:.1f} | {r['hessian_s']:.1f} | "
            f"{worst:.2f}× | {r['solve_s']:.1f} "
            f"| {r['save_s']:.1f} | {r['reload_s']:.1f} | {peak:.2f} | {r['predicted_peak_gb']:.2f} | "
            f"{peak / r['predicted_peak_gb']:.2f} "
            f"| {r['params_b']:.2f} | {r['spec_params_b']:.2f} |"
        )


if __name__ == "__main__":
    main()
