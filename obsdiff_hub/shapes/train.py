"""Train the embedded shapes pipeline and its scorer on CPU (minutes), then save them.

    python -m obsdiff_hub.shapes.train --out obsdiff_hub/shapes/weights

Stages: a VAE (32×32×3 ↔ 16×16×4), the scorer (a classifier of the four attributes),
then a CLIP text encoder and a cross-attention/GEGLU UNet trained jointly with the DDPM
ε-objective (10% empty captions so classifier-free guidance works). Deterministic from
``--seed`` up to floating-point nondeterminism of the CPU kernels.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from ..storage.files import write_safetensors_file
from ..tiny import clip_text_config, clip_vocab
from .dataset import ATTRIBUTES, COLORS, POSITIONS, SHAPES, SIZES, sample_batch
from .scorer import ShapeClassifier, caption_accuracy

WORDS = ("a", "the", "on", "in", "small", "large", "left", "right", "top", "bottom", "center") + SHAPES + tuple(COLORS)


def make_tokenizer() -> CLIPTokenizer:
    vocab, merges = clip_vocab(WORDS)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


def make_models(vocab_size: int) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )
    text = CLIPTextModel(clip_text_config(64, 64, vocab_size, heads=4, max_length=16))
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=(2, 4),  # heads (diffusers' name); head size 16
        cross_attention_dim=64,
        norm_num_groups=8,
        use_linear_projection=True,
    )
    return vae, text, unet


def train_vae(vae: AutoencoderKL, steps: int, seed: int, log) -> float:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for step in range(steps):
        images, _, _ = sample_batch(32, seed * 100_000 + step)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0:
            log(f"vae {step}/{steps} mse {loss.item():.4f}")
    with torch.no_grad():
        images, _, _ = sample_batch(256, seed + 7)
        latents = vae.encode(images).latent_dist.mean
    return float(1.0 / latents.std())


def train_classifier(steps: int, seed: int, log) -> ShapeClassifier:
    model = ShapeClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(steps):
        images, _, labels = sample_batch(64, seed * 200_000 + step)
        images = images + 0.08 * torch.randn_like(images)  # robust to generation noise
        logits = model(images)
        loss = sum(F.cross_entropy(logits[k], labels[k]) for k in ATTRIBUTES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, _, labels = sample_batch(512, seed + 11)
    log(f"classifier held-out accuracy {caption_accuracy(model.eval(), images, labels, tuple(ATTRIBUTES))}")
    return model


def train_denoiser(vae, text, unet, tokenizer, scaling: float, minutes: float, max_steps: int, seed: int, log) -> int:
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    vae.requires_grad_(False)
    deadline = time.monotonic() + 60 * minutes
    step = 0
    for step in itertools.count():
        if step >= max_steps or time.monotonic() > deadline:
            break
        lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max_steps)))
        for group in optimizer.param_groups:
            group["lr"] = max(lr, 5e-5)
        images, captions, _ = sample_batch(64, seed * 300_000 + step)
        g = torch.Generator().manual_seed(seed * 400_000 + step)
        captions = ["" if torch.rand(1, generator=g).item() < 0.1 else c for c in captions]
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=g) * scaling
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, 1000, (latents.shape[0],), generator=g)
        noisy = scheduler.add_noise(latents, noise, t)
        ids = tokenizer(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
        pred = unet(noisy, t, encoder_hidden_states=text(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 200 == 0:
            log(f"denoiser {step} loss {loss.item():.4f}")
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=700)
    parser.add_argument("--classifier-steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=22.0, help="time budget for the denoiser")
    parser.add_argument("--max-steps", type=int, default=5000)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    tokenizer = make_tokenizer()
    vae, text, unet = make_models(len(tokenizer))
    scaling = train_vae(vae, args.vae_steps, args.seed, log)
    vae.register_to_config(scaling_factor=scaling)
    log(f"latent scaling factor {scaling:.4f}")
    classifier = train_classifier(args.classifier_steps, args.seed, log)
    steps = train_denoiser(vae, text, unet, tokenizer, scaling, args.minutes, args.max_steps, args.seed, log)
    log(f"denoiser trained for {steps} steps")
    pipeline = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline.to(torch.float16).save_pretrained(args.out / "pipeline")
    write_safetensors_file(
        args.out / "scorer.safetensors", {k: v.half().contiguous() for k, v in classifier.state_dict().items()}
    )
    log(f"saved to {args.out}; sizes {SIZES} positions {tuple(POSITIONS)}")


if __name__ == "__main__":
    main()
