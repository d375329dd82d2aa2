"""Adapters of the dense base on pruned checkpoints: how close the mapped LoRA comes, and what
``compile_repeated_blocks`` costs on per-block shapes.

- ``lora``: the embedded shapes model gets a LoRA trained briefly (``--lora-steps``, rank 4 on
  q/k/v, to_out, both FFN layers) to draw every image colour-inverted. The dense model is then
  pruned (structured 30%, and unstructured 50% for contrast), saved and reloaded, and the dense
  LoRA file is loaded onto it with ``load_lora_weights``. Side by side, on the 60 evaluation
  captions with the same seeds: PSNR of pruned vs dense (no LoRA), of pruned+LoRA vs dense+LoRA,
  and of dense+LoRA vs dense (how much the LoRA changes the images at all).
- ``compile``: graphs ``compile_repeated_blocks`` traces (``backend="eager"``: Dynamo only, on the
  meta device) for the real SDXL UNet and Flux.1-dev configs, dense and with a per-block pruned
  structure, at Dynamo's default recompile limit (8) and at 128.

Run:

    python benchmarks/adapters.py [--parts lora,compile] [--lora-steps 400]
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.architectures import architecture_of
from obsdiff_hub.architectures.surgery import structure_of
from obsdiff_hub.models import build_model
from obsdiff_hub.pruning.plan import builtin_config
from obsdiff_hub.shapes.dataset import sample_batch
from obsdiff_hub.shapes.pipeline import evaluate, load_shapes_pipeline

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * torch.log10(torch.tensor(4.0 / max(float(((a - b) ** 2).mean()), 1e-12))).item()


def train_lora(pipe, steps: int, folder: Path) -> None:
    """A rank-4 LoRA that makes the model draw colour-inverted images, saved the diffusers way."""
    unet, vae, text, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=TARGETS))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scaling = vae.config.scaling_factor
    unet.train()
    for step in range(steps):
        images, captions, _ = sample_batch(32, 900_000 + step)
        g = torch.Generator().manual_seed(step)
        with torch.no_grad():
            latents = vae.encode(-images).latent_dist.sample(generator=g) * scaling
            ids = tokenizer(
                captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
            ).input_ids
            context = text(ids)[0]
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
        loss = F.mse_loss(unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    unet.delete_adapters("default")


def lora(steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dense = load_shapes_pipeline()
        _, dense_images = evaluate(dense)
        start = time.perf_counter()
        train_lora(dense, steps, root / "lora")
        trained_s = time.perf_counter() - start
        dense.load_lora_weights(root / "lora")
        _, dense_lora = evaluate(dense)
        print(
            f"\n## dense LoRA mapped onto pruned shapes checkpoints (LoRA: {steps} steps, {trained_s:.0f} s; 60 "
            "captions, same seeds)\n"
        )
        print(f"dense+LoRA vs dense: {psnr(dense_lora, dense_images):.2f} dB (how much the LoRA changes the images)\n")
        print("| checkpoint | pruned vs dense (dB) | pruned+LoRA vs dense+LoRA (dB) | pruned+LoRA vs dense (dB) |")
        print("|---|---|---|---|")
        for label, settings in (
            ("structured 30%", dict(granularity="structured", sparsity=0.3)),
            ("unstructured 50%", dict(granularity="unstructured", sparsity=0.5)),
        ):
            pipe = load_shapes_pipeline()
            calibration = dict(prompts={"count": 32}, steps=20, guidance_scale=4.0, resolution=32, batch_size=8)
            oh.prune(pipe, {**settings, "packages": 1}, calibration=calibration)
            out = oh.save_pruned(pipe, root / label.replace(" ", "-").replace("%", ""))
            pruned = DiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
            _, plain = evaluate(pruned)
            pruned.load_lora_weights(root / "lora")
            _, with_lora = evaluate(pruned)
            print(
                f"| {label} | {psnr(plain, dense_images):.2f} | {psnr(with_lora, dense_lora):.2f} | "
                f"{psnr(with_lora, dense_images):.2f} |",
                flush=True,
            )


def on_meta(inputs: dict) -> dict:
    return {
        k: v.to("meta")
        if torch.is_tensor(v)
        else {n: t.to("meta") for n, t in v.items()}
        if isinstance(v, dict)
        else v
        for k, v in inputs.items()
    }


def graphs(model: torch.nn.Module, limit: int) -> tuple[int, int]:
    """(graphs Dynamo traced, frames that fell back to eager at the recompile limit) for one forward
    of ``model`` with its repeated blocks compiled (``backend="eager"``: tracing only, on meta tensors)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch._dynamo.config.recompile_limit = limit
    model.compile_repeated_blocks(backend="eager")
    with torch.no_grad():
        model(
            **on_meta(tiny.example_inputs(model, 1, seed=0)),
            timestep=torch.tensor([500.0], device="meta"),
            return_dict=False,
        )
    counters = torch._dynamo.utils.counters
    return int(counters["stats"]["unique_graphs"]), int(counters["frames"]["total"] - counters["frames"]["ok"])


def compile_costs() -> None:
    """Real public configs on the meta device; the pruned structure keeps a random 60-80% of every
    attention's heads and MLP's neurons, as an error-allocated structured run does (every block its own shape)."""
    print("\n## compile_repeated_blocks on per-block shapes (real configs, Dynamo tracing only)\n")
    print(
        "| model | blocks | graphs dense | graphs pruned (limit 8) | frames left eager | graphs pruned (limit 128) |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("sdxl-base-1.0.unet", "flux1-dev.transformer"):
        config = builtin_config(name)
        skeleton = build_model(config)
        architecture = architecture_of(skeleton)
        rng = random.Random(0)
        structure = {
            k: max(1, round(v * rng.uniform(0.6, 0.8))) for k, v in structure_of(skeleton, architecture).items()
        }
        dense_graphs, _ = graphs(build_model(config), 8)
        pruned_graphs, eager = graphs(build_model(config, structure=structure), 8)
        unlimited, _ = graphs(build_model(config, structure=structure), 128)
        print(
            f"| {name} | {len(architecture.blocks(skeleton))} | {dense_graphs} | {pruned_graphs} | {eager} | "
            f"{unlimited} |",
            flush=True,
        )
    torch._dynamo.config.recompile_limit = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="lora,compile")
    parser.add_argument("--lora-steps", type=int, default=400)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}"
    )
    parts = args.parts.split(",")
    if "lora" in parts:
        lora(args.lora_steps)
    if "compile" in parts:
        compile_costs()


if __name__ == "__main__":
    main()
