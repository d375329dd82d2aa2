"""What reading Hessian inputs at TF32 or bf16 precision costs, against strict fp32.

Activations: (a) SD3-Medium's real shapes (public config, random weights): the inputs of
block 5's ``attn.to_q`` (1536) and ``ff.net.2`` (6144) for 4 prompts with CFG at 4 timesteps,
256² (8192 image-token rows); (b) the trained shapes model's real activations: the mid block's
``ff.net.2`` input over 16 captions × 20 steps. For each precision the accumulator
reads the inputs rounded as the tensor cores would (emulated on CPU, exact in what it
rounds), with fp32 accumulation. Reported: the relative Frobenius error of H against an fp64
reference, and what it does to pruning: the layer's reconstruction error (under the fp64 H)
after 50% OBS pruning with each H, relative to pruning with the fp32 H. Run:

    python benchmarks/hessian_precision.py
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from obsdiff_hub.maths.hessian import ACCUMULATION_PRECISIONS, HessianAccumulator
from obsdiff_hub.maths.obs import obs_prune_shared

sys.path.insert(0, str(Path(__file__).parent))


class _Stop(Exception):
    pass


def sd3_activations(layers: list[str], stop_after: str) -> dict[str, torch.Tensor]:
    """Inputs of ``layers`` in SD3-Medium (real config, random weights), forward stopped early."""
    from full_scale import build_pipeline

    from obsdiff_hub.zoo.recipes import load_recipe

    pipe = build_pipeline(load_recipe("sd3-medium-25"))
    model = pipe.transformer.float()
    captured: dict[str, list[torch.Tensor]] = {p: [] for p in layers}
    for path in layers:
        model.get_submodule(path).register_forward_pre_hook(
            lambda m, a, p=path: captured[p].append(a[0].reshape(-1, a[0].shape[-1]).clone())
        )

    def stop(*_):
        raise _Stop

    model.get_submodule(stop_after).register_forward_hook(stop)
    from obsdiff_hub.pruning.prompts import builtin_prompts

    with torch.inference_mode():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            builtin_prompts()[:4], None, None, device="cpu", do_classifier_free_guidance=True
        )
        text = torch.cat([negative, embeds])
        pooled = torch.cat([negative_pooled, pooled])
        g = torch.Generator().manual_seed(0)
        for t in (999.0, 750.0, 500.0, 250.0):
            latents = torch.randn(8, 16, 32, 32, generator=g)
            try:
                model(
                    hidden_states=latents,
                    encoder_hidden_states=text,
                    pooled_projections=pooled,
                    timestep=torch.full((8,), t),
                )
            except _Stop:
                pass
    weights = {p: model.get_submodule(p).weight.detach().clone() for p in layers}
    return {p: (torch.cat(captured[p]), weights[p]) for p in layers}


def shapes_activations(layer: str) -> dict[str, torch.Tensor]:
    """The trained shapes model's real activations of ``layer`` over calibration trajectories."""
    from obsdiff_hub.pruning.prompts import builtin_prompts
    from obsdiff_hub.shapes.pipeline import load_shapes_pipeline

    pipe = load_shapes_pipeline()
    pipe.set_progress_bar_config(disable=True)
    rows: list[torch.Tensor] = []
    pipe.unet.get_submodule(layer).register_forward_pre_hook(
        lambda m, a: rows.append(a[0].reshape(-1, a[0].shape[-1]).clone())
    )
    with torch.inference_mode():
        pipe(
            builtin_prompts("shapes")[:16],
            num_inference_steps=20,
            guidance_scale=4.0,
            height=32,
            width=32,
            generator=[torch.Generator().manual_seed(i) for i in range(16)],
            output_type="latent",
        )
    return {layer: (torch.cat(rows), pipe.unet.get_submodule(layer).weight.detach().clone())}


def compare(name: str, X: torch.Tensor, W: torch.Tensor) -> list[str]:
    reference = 2 * X.double().T @ X.double() / X.shape[0]
    hessians = {}
    for precision in ACCUMULATION_PRECISIONS:
        acc = HessianAccumulator(X.shape[1], precision=precision)
        for chunk in X.split(512):
            acc.add(chunk)
        hessians[precision] = acc.hessian()

    def pruned_error(H: torch.Tensor) -> float:
        ((W_hat, _),) = obs_prune_shared([W], H, 0.5)
        delta = W.double() - W_hat.double()
        return float((delta @ reference * delta).sum())

    base = pruned_error(hessians["fp32"])
    lines = []
    for precision, H in hessians.items():
        relative = float((H.double() - reference).norm() / reference.norm())
        lines.append(
            f"| {name} | {X.shape[0]}×{X.shape[1]} | {precision} | {relative:.2e} | {pruned_error(H) / base:.5f} |"
        )
    return lines


def main() -> None:
    diffusers_logging.disable_progress_bar()
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}; tf32/bf16 rounding "
        "emulated on CPU"
    )
    print("| activations | rows×cols | precision | ‖H − H_fp64‖ / ‖H_fp64‖ | 50% OBS reconstruction error vs fp32 H |")
    print("|---|---|---|---|---|")
    shapes = shapes_activations("mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    for layer, (X, W) in shapes.items():
        for line in compare(f"shapes model (trained) {layer}", X, W):
            print(line, flush=True)
    block = "transformer_blocks.5"
    sd3 = sd3_activations([f"{block}.attn.to_q", f"{block}.ff.net.2"], stop_after=f"{block}")
    for layer, (X, W) in sd3.items():
        for line in compare(f"SD3-Medium (random weights) {layer}", X, W):
            print(line, flush=True)


if __name__ == "__main__":
    main()
