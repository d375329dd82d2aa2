"""Adapters, compilers, quantizers and exporters on structurally pruned checkpoints (tiny SDXL, SD3, Flux).

References are independent of the mapping code: the expected rows and columns are built here from
the per-module kept lists in ``report.json`` (the mapping reads the hex masks in the config).
"""

import json

import pytest
import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    QuantoConfig,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)
from peft import LoraConfig, get_peft_model_state_dict

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.architectures import architecture_of
from obsdiff_hub.architectures.base import HeadCoupling
from obsdiff_hub.checkpoints.inspection import inspect_checkpoint
from obsdiff_hub.errors import CheckpointError, InputError

CAL = dict(prompts={"count": 2}, batch_size=2, steps=2, resolution=32)
RECORD = oh.provenance(recipe="tiny-test", recipe_version=1, method="obs-diff", granularity="structured", sparsity=0.4)
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
MMDIT_TARGETS = UNET_TARGETS + ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
FLUX_TARGETS = MMDIT_TARGETS + ["proj_mlp", "proj_out"]


def dense_lora(model, targets, seed=1):
    """A rank-4 LoRA with random non-zero A and B on a copy of the dense model (peft format, no prefix)."""
    torch.manual_seed(seed)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    model.delete_adapters("default")
    return state, 1.0  # lora_alpha / r: files saved without metadata load with alpha = r


def expected_indices(model, structure):
    """Per reshaped layer, (kept dense rows, kept dense columns), from report.json's kept lists."""
    records = {r["module"]: r for r in structure if r["after"] < r["before"]}
    rows, cols = {}, {}
    for c in architecture_of(model).couplings(model):
        if c.key not in records:
            continue
        kept, before = records[c.key]["kept"], records[c.key]["before"]
        if isinstance(c, HeadCoupling):
            head_rows = [h * c.head_dim + i for h in kept for i in range(c.head_dim)]
            for path in c.row_layers:
                rows[path] = head_rows
            for path in c.out_layers:
                width = model.get_submodule(path).in_features  # dense: heads first, then anything else
                cols[path] = head_rows + [
                    x for x in cols.get(path, range(before * c.head_dim, width)) if x >= before * c.head_dim
                ]
        else:
            rows[c.in_layer] = kept + [before + k for k in kept] if c.geglu else list(kept)
            width = model.get_submodule(c.out_layer).in_features
            offset = width - before
            cols[c.out_layer] = [x for x in cols.get(c.out_layer, range(offset)) if x < offset] + [
                offset + k for k in kept
            ]
    return rows, cols


def fused_delta_matches(pruned, dense, lora, scale, structure, prefix=""):
    """Every fused LoRA weight equals the pruned weight plus the dense delta scale·B·A at the kept rows/columns."""
    rows, cols = expected_indices(dense, structure)
    checked = 0
    for key, A in lora.items():
        if ".lora_A." not in key:
            continue
        path = key.removeprefix(prefix).split(".lora_A.")[0]
        B = lora[key.replace(".lora_A.", ".lora_B.")]
        delta = scale * (B @ A)
        delta = delta[torch.tensor(rows[path])] if path in rows else delta
        delta = delta[:, torch.tensor(cols[path])] if path in cols else delta
        yield path, delta
        checked += 1
    assert checked >= 6


def assert_fused_is_pruned_plus_kept_delta(pipe, before, sdxl):
    """Every LoRA-targeted weight of ``pipe``'s fused UNet equals its pruned weight (``before``) plus the dense
    LoRA delta at the kept rows and columns."""
    fused = pipe.unet.state_dict()
    for path, delta in fused_delta_matches(
        pipe.unet, sdxl["dense"].unet, sdxl["lora"], sdxl["scale"], sdxl["structure"]
    ):
        key = next(k for k in fused if k in (f"{path}.base_layer.weight", f"{path}.weight"))
        torch.testing.assert_close(fused[key], before[f"{path}.weight"] + delta, rtol=1e-5, atol=1e-6)


def fuse_and_compare(sdxl, *source, **options):
    """The pruned pipeline with the LoRA at ``source`` loaded and fused: the fused weights are exact."""
    pipe = DiffusionPipeline.from_pretrained(sdxl["out"])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(*source, **options)
    pipe.fuse_lora()
    assert_fused_is_pruned_plus_kept_delta(pipe, before, sdxl)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A structurally pruned tiny SDXL pipeline on disk, its dense twin, and a dense LoRA saved the diffusers way."""
    root = tmp_path_factory.mktemp("sdxl")
    pipe = tiny.tiny_sdxl_pipeline()
    result = oh.prune(pipe, dict(granularity="structured", sparsity=0.4, packages=1), calibration=CAL)
    out = oh.save_pruned(pipe, root / "pruned", record=RECORD)
    dense = tiny.tiny_sdxl_pipeline()
    lora, scale = dense_lora(dense.unet, UNET_TARGETS)
    StableDiffusionXLPipeline.save_lora_weights(root / "lora", unet_lora_layers=lora)
    structure = [dict(module=r.module, before=r.before, after=r.after, kept=r.kept) for r in result.report.structure]
    return dict(out=out, dense=dense, lora=lora, scale=scale, structure=structure, root=root)


def latents(pipe, **extra):
    return pipe(
        "a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **extra,
    ).images


def test_structured_checkpoint_records_the_kept_heads_and_neurons(sdxl):
    config = json.loads((sdxl["out"] / "unet" / "config.json").read_text())
    record = config["_obsdiff_kept"]
    removed = [r for r in sdxl["structure"] if r["after"] < r["before"]]
    assert removed and set(record) == {r["module"] for r in removed}
    for r in removed:
        assert len(r["kept"]) == r["after"] and r["kept"] == sorted(set(r["kept"]))
        assert record[r["module"]] == {
            "of": r["before"],
            "kept": format(sum(1 << k for k in r["kept"]), "x").zfill((r["before"] + 3) // 4),
        }
    assert "kept_indices" in config["_obsdiff_provenance"]
    shown = inspect_checkpoint(str(sdxl["out"]))
    assert f"kept indices recorded for {len(removed)} pruned modules" in shown.adapters
    assert all(shown.structure[r["module"]]["kept"] for r in removed)


def test_dense_lora_maps_onto_the_pruned_pipeline_fused_unfused_and_unloaded(sdxl):
    pipe = DiffusionPipeline.from_pretrained(sdxl["out"])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = latents(pipe)
    pipe.load_lora_weights(sdxl["root"] / "lora")
    unfused = latents(pipe)
    assert not torch.allclose(unfused, plain, atol=1e-4)
    pipe.unload_lora_weights()
    assert all(
        torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items()
    )  # exactly the pruned weights again
    pipe.load_lora_weights(sdxl["root"] / "lora", adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    pipe.fuse_lora()
    torch.testing.assert_close(latents(pipe), unfused, rtol=1e-4, atol=1e-5)
    assert_fused_is_pruned_plus_kept_delta(pipe, before, sdxl)


def test_a_training_script_lora_of_mixed_layouts_maps_every_key(sdxl):
    """diffusers' training scripts save ``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))``:
    attention as ``lora.down``/``lora.up``, the FFN as ``lora_A``/``lora_B``, in one file."""
    mixed = {
        (k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.") if ".attn" in k else k): v
        for k, v in sdxl["lora"].items()
    }
    assert any(".lora.down." in k for k in mixed) and any(".lora_A." in k for k in mixed)
    StableDiffusionXLPipeline.save_lora_weights(sdxl["root"] / "mixed", unet_lora_layers=mixed)
    fuse_and_compare(sdxl, sdxl["root"] / "mixed")


def test_a_kohya_format_lora_maps_onto_the_kept_heads_and_neurons(sdxl):
    """kohya's names (``lora_unet_…``, ``lora_down``/``lora_up``, ``alpha``): diffusers converts, then the mapping."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in sdxl["lora"].items()})
    assert all(k.startswith("lora_unet_") for k in kohya)
    save_file({k: v.contiguous() for k, v in kohya.items()}, sdxl["root"] / "kohya.safetensors")
    fuse_and_compare(sdxl, sdxl["root"], weight_name="kohya.safetensors")


def test_lora_fused_into_the_dense_model_agrees_on_the_rows_pruning_kept_unchanged(sdxl):
    """q/k/v rows are not compensated: the dense model with the LoRA fused, restricted to the kept
    heads (decoded from the checkpoint's own record), equals the pruned model with the LoRA fused."""
    pruned = oh.OBSDiffUNet.from_pretrained(sdxl["out"], subfolder="unet")
    pruned.load_lora_adapter(sdxl["lora"], prefix=None)
    pruned.fuse_lora(lora_scale=1.0)
    dense = tiny.tiny_sdxl_pipeline().unet
    dense.load_lora_adapter(sdxl["lora"], prefix=None)
    dense.fuse_lora(lora_scale=1.0)
    selections, recorded = pruned.kept_selections()
    assert recorded
    qkv = [p for p, s in selections.items() if p.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")]
    assert qkv
    for path in qkv:
        got = pruned.get_submodule(path)
        want = dense.get_submodule(path)
        got_w = getattr(got, "base_layer", got).weight
        want_w = getattr(want, "base_layer", want).weight
        torch.testing.assert_close(got_w, want_w[selections[path].rows], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family,targets", [("sd3", MMDIT_TARGETS), ("flux", FLUX_TARGETS)])
def test_dense_lora_on_pruned_transformers(family, targets):
    torch.manual_seed(0)
    model = tiny.TINY_DENOISERS[family]().eval()
    dense = tiny.TINY_DENOISERS[family]().eval()
    dense.load_state_dict(model.state_dict())
    cal = tiny.toy_calibration([tiny.example_inputs(model, 2)], 2)
    result = oh.prune(model, dict(granularity="structured", sparsity=0.4), calibration=cal, steps=2)
    pruned = result.model
    structure = [dict(module=r.module, before=r.before, after=r.after, kept=r.kept) for r in result.report.structure]
    lora, scale = dense_lora(dense, targets)
    prefixed = {f"transformer.{k}": v for k, v in lora.items()}
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    pruned.load_lora_adapter(prefixed, prefix="transformer")
    inputs = tiny.example_inputs(pruned, 1, seed=3)
    with torch.no_grad():
        unfused = tiny.run_denoiser(pruned, inputs, 500.0)
    pruned.fuse_lora()
    with torch.no_grad():
        torch.testing.assert_close(tiny.run_denoiser(pruned, inputs, 500.0), unfused, rtol=1e-4, atol=1e-5)
    fused = pruned.state_dict()
    paths = set()
    for path, delta in fused_delta_matches(pruned, dense, lora, scale, structure):
        key = next(k for k in fused if k in (f"{path}.base_layer.weight", f"{path}.weight"))
        torch.testing.assert_close(fused[key], before[f"{path}.weight"] + delta, rtol=1e-5, atol=1e-6)
        paths.add(path)
    if family == "flux":  # the single blocks' fused projections, heads and MLP columns both mapped
        assert any(p.endswith("proj_out") and p.startswith("single") for p in paths) and any(
            p.endswith("proj_mlp") for p in paths
        )


@pytest.mark.parametrize("family,targets", [("sd3", MMDIT_TARGETS), ("flux", FLUX_TARGETS)])
def test_a_dense_lora_file_through_the_pipeline_of_a_pruned_transformer(family, targets, tmp_path):
    """``load_lora_weights`` on the pipeline ``load_pipeline`` returns: diffusers' Flux loader compares the LoRA
    with the layers (and widens them) before the model's own loader runs, so the mapping comes first there."""
    pipe = tiny.tiny_sd3_pipeline() if family == "sd3" else tiny.tiny_flux_pipeline()
    result = oh.prune(pipe, dict(granularity="structured", sparsity=0.4, packages=1), calibration=CAL)
    out = oh.save_pruned(pipe, tmp_path / "pruned", record=RECORD)
    dense = tiny.tiny_sd3_pipeline() if family == "sd3" else tiny.tiny_flux_pipeline()
    lora, scale = dense_lora(dense.transformer, targets)
    type(dense).save_lora_weights(tmp_path / "lora", transformer_lora_layers=lora)
    structure = [dict(module=r.module, before=r.before, after=r.after, kept=r.kept) for r in result.report.structure]
    loaded = oh.load_pipeline(str(out))
    before = {k: v.clone() for k, v in loaded.transformer.state_dict().items()}
    loaded.load_lora_weights(tmp_path / "lora")
    loaded.fuse_lora()
    fused = loaded.transformer.state_dict()
    for path, delta in fused_delta_matches(loaded.transformer, dense.transformer, lora, scale, structure):
        key = next(k for k in fused if k in (f"{path}.base_layer.weight", f"{path}.weight"))
        torch.testing.assert_close(fused[key], before[f"{path}.weight"] + delta, rtol=1e-5, atol=1e-6)
    if family == "flux":  # diffusers' own pipeline class: its Flux loader widens the pruned layers and fails
        with pytest.raises(RuntimeError, match="size mismatch"):
            DiffusionPipeline.from_pretrained(out).load_lora_weights(tmp_path / "lora")
    else:
        plain = DiffusionPipeline.from_pretrained(out)
        plain.load_lora_weights(tmp_path / "lora")
        plain.fuse_lora()
        assert all(torch.equal(v, fused[k]) for k, v in plain.transformer.state_dict().items())


def test_a_lora_for_another_base_is_one_error_naming_a_tensor(sdxl):
    unet = oh.OBSDiffUNet.from_pretrained(sdxl["out"], subfolder="unet")
    key = next(k for k in sdxl["lora"] if k.endswith("attn1.to_q.lora_B.weight"))
    wrong = {**sdxl["lora"], key: torch.randn(7, 4)}
    with pytest.raises(InputError, match=rf"LoRA tensor {key.replace('.', '[.]')} has 7 rows.*different base model"):
        unet.load_lora_adapter(wrong, prefix=None)
    assert not getattr(unet, "peft_config", {})  # nothing half-loaded


def test_a_checkpoint_without_kept_indices_refuses_dense_adapters_in_one_line(sdxl, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(sdxl["out"] / "unet", old)
    config = json.loads((old / "config.json").read_text())
    del config["_obsdiff_kept"]
    (old / "config.json").write_text(json.dumps(config))
    unet = oh.OBSDiffUNet.from_pretrained(old)
    assert "kept indices not recorded" in inspect_checkpoint(str(old)).adapters
    with pytest.raises(CheckpointError, match="does not record which heads and neurons pruning kept") as error:
        unet.load_lora_adapter(sdxl["lora"], prefix=None)
    assert "\n" not in str(error.value)


def test_fusing_into_a_sparse_checkpoint_warns_once_how_to_stay_sparse(tmp_path):
    torch.manual_seed(0)
    model = tiny.tiny_sd3_transformer()
    cal = tiny.toy_calibration([tiny.example_inputs(model, 2)], 2)
    pruned = oh.prune(model, dict(granularity="unstructured", sparsity=0.5), calibration=cal, steps=2).model
    out = oh.save_pruned(pruned, tmp_path / "sparse", record=oh.provenance(granularity="unstructured", sparsity=0.5))
    assert json.loads((out / "config.json").read_text())["_class_name"] == "OBSDiffSD3Transformer"
    loaded = oh.OBSDiffSD3Transformer.from_pretrained(out)  # the class its config names
    lora, _ = dense_lora(tiny.tiny_sd3_transformer(), ["to_q"])
    loaded.load_lora_adapter(lora, prefix=None)
    with pytest.warns(UserWarning, match="keep the adapter unfused"):
        loaded.fuse_lora()
    assert (
        float((loaded.transformer_blocks[0].attn.to_q.base_layer.weight == 0).float().mean()) < 0.1
    )  # dense now, as warned


def ip_adapter_state_dict(unet, image_dim=16, tokens=4, seed=2):
    """An IP-Adapter (plain ``ImageProjection``) for the dense UNet, as diffusers' loader reads it."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    image_proj = {
        "proj.weight": torch.randn(cross * tokens, image_dim, generator=g) * 0.1,
        "proj.bias": torch.zeros(cross * tokens),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            width = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            ip[f"{key_id}.to_k_ip.weight"] = torch.randn(width, cross, generator=g) * 0.1
            ip[f"{key_id}.to_v_ip.weight"] = torch.randn(width, cross, generator=g) * 0.1
            key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip}


def test_ip_adapter_of_the_dense_base_maps_onto_the_kept_heads(sdxl):
    dense_unet = tiny.tiny_sdxl_pipeline().unet
    state = ip_adapter_state_dict(dense_unet)
    unet = oh.OBSDiffUNet.from_pretrained(sdxl["out"], subfolder="unet")
    inputs = tiny.example_inputs(unet, 1, seed=5)
    with torch.no_grad():
        plain = tiny.run_denoiser(unet, inputs, 500.0)
    unet._load_ip_adapter_weights([state])
    rows, _ = expected_indices(dense_unet, sdxl["structure"])
    names = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for i, name in enumerate(names):
        processor = unet.attn_processors[name]
        path = name.removesuffix(".processor")
        kept = (
            torch.tensor(rows[f"{path}.to_k"])
            if f"{path}.to_k" in rows
            else torch.arange(processor.to_k_ip[0].out_features)
        )
        assert torch.equal(processor.to_k_ip[0].weight, state["ip_adapter"][f"{2 * i + 1}.to_k_ip.weight"][kept])
        assert torch.equal(processor.to_v_ip[0].weight, state["ip_adapter"][f"{2 * i + 1}.to_v_ip.weight"][kept])
    assert any(f"{n.removesuffix('.processor')}.to_k" in rows for n in names)
    inputs["added_cond_kwargs"]["image_embeds"] = [
        torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(6))
    ]  # batch, images, dim
    with torch.no_grad():
        with_image = tiny.run_denoiser(unet, inputs, 500.0)
    assert (
        with_image.shape == plain.shape
        and torch.isfinite(with_image).all()
        and not torch.allclose(with_image, plain, atol=1e-5)
    )


def test_controlnet_of_the_dense_base_drives_the_pruned_unet(sdxl):
    pruned = DiffusionPipeline.from_pretrained(sdxl["out"])
    torch.manual_seed(4)
    downsamplings = len(pruned.vae.config.block_out_channels) - 1  # the conditioning image enters at latent size
    controlnet = ControlNetModel.from_unet(
        tiny.tiny_sdxl_pipeline().unet,
        conditioning_channels=3,
        conditioning_embedding_out_channels=tuple(16 * 2**i for i in range(downsamplings + 1)),
    )
    with torch.no_grad():  # a trained ControlNet: its zero-initialised output convolutions are not zero any more
        for p in [*controlnet.controlnet_down_blocks.parameters(), *controlnet.controlnet_mid_block.parameters()]:
            p.normal_(0, 0.05)
    pipe = StableDiffusionXLControlNetPipeline(
        **{k: v for k, v in pruned.components.items() if k != "image_encoder" and k != "feature_extractor"},
        controlnet=controlnet,
    )
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    off = latents(pipe, image=image, controlnet_conditioning_scale=0.0)
    torch.testing.assert_close(
        off, latents(pruned), rtol=1e-5, atol=1e-5
    )  # zero residuals: exactly the pruned pipeline
    on = latents(pipe, image=image, controlnet_conditioning_scale=1.0)
    assert torch.isfinite(on).all() and not torch.allclose(on, off, atol=1e-4)


def test_a_controlnet_made_from_the_pruned_unet_has_its_shapes_and_saves_bit_for_bit(sdxl, tmp_path):
    pruned = DiffusionPipeline.from_pretrained(sdxl["out"])
    with pytest.raises(RuntimeError, match="size mismatch"):  # diffusers' own builds the dense shapes
        ControlNetModel.from_unet(pruned.unet)
    downsamplings = len(pruned.vae.config.block_out_channels) - 1
    channels = tuple(16 * 2**i for i in range(downsamplings + 1))
    controlnet = oh.OBSDiffControlNet.from_unet(pruned.unet, conditioning_embedding_out_channels=channels)
    unet_state = pruned.unet.state_dict()
    copied = [k for k in controlnet.state_dict() if k.startswith(("down_blocks.", "mid_block.", "conv_in."))]
    assert any(".attn1.to_q." in k for k in copied)
    for key in copied:  # the encoder half is the pruned UNet's, shapes and values
        assert torch.equal(controlnet.state_dict()[key], unet_state[key]), key
    shrunk = [r for r in sdxl["structure"] if r["after"] < r["before"] and r["module"].startswith("down_blocks.")]
    assert shrunk and controlnet.config["obsdiff_structure"]  # some encoder blocks lost heads or neurons
    with torch.no_grad():  # trained: its zero-initialised output convolutions are not zero any more
        for p in [*controlnet.controlnet_down_blocks.parameters(), *controlnet.controlnet_mid_block.parameters()]:
            p.normal_(0, 0.05)
    controlnet.save_pretrained(tmp_path / "controlnet")
    reloaded = oh.OBSDiffControlNet.from_pretrained(tmp_path / "controlnet")
    assert reloaded.state_dict().keys() == controlnet.state_dict().keys()
    assert all(torch.equal(v, controlnet.state_dict()[k]) for k, v in reloaded.state_dict().items())
    pipe = StableDiffusionXLControlNetPipeline(
        **{k: v for k, v in pruned.components.items() if k not in ("image_encoder", "feature_extractor")},
        controlnet=reloaded,
    )
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(latents(pipe, image=image, controlnet_conditioning_scale=0.0), latents(pruned))
    on = latents(pipe, image=image, controlnet_conditioning_scale=1.0)
    assert torch.isfinite(on).all() and not torch.allclose(on, latents(pruned), atol=1e-4)


def test_compile_export_and_int8_quantization_of_a_structured_checkpoint(sdxl):
    unet = oh.OBSDiffUNet.from_pretrained(sdxl["out"], subfolder="unet").eval()
    inputs = tiny.example_inputs(unet, 1, seed=9)
    t = torch.tensor([500.0])
    with torch.no_grad():
        eager = unet(**inputs, timestep=t, return_dict=False)[0]
        # fullgraph: the pruned shapes trace as one graph; aot_eager runs it without inductor's C++ build, which
        # is the same for any model (and costs a minute on a fresh machine)
        compiled = torch.compile(unet, fullgraph=True, backend="aot_eager")(**inputs, timestep=t, return_dict=False)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    exported = torch.export.export(unet, (), {**inputs, "timestep": t, "return_dict": False})
    with torch.no_grad():
        torch.testing.assert_close(
            exported.module()(**inputs, timestep=t, return_dict=False)[0], eager, rtol=1e-5, atol=1e-6
        )
    quantized = oh.OBSDiffUNet.from_pretrained(
        sdxl["out"], subfolder="unet", quantization_config=QuantoConfig(weights_dtype="int8")
    )
    q = quantized.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert (
        type(q).__name__ == "QLinear"
        and q.weight.shape == unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight.shape
    )
    with torch.no_grad():
        approx = quantized(**inputs, timestep=t, return_dict=False)[0]
    assert float((approx - eager).norm() / eager.norm()) < 0.05


def test_a_structured_transformer_exports_to_onnx_smaller_by_exactly_the_removed_parameters(tmp_path):
    import math

    import onnx

    torch.manual_seed(0)
    model = tiny.tiny_sd3_transformer().eval()
    dense = tiny.tiny_sd3_transformer().eval()
    cal = tiny.toy_calibration([tiny.example_inputs(model, 2)], 2)
    pruned = oh.prune(model, dict(granularity="structured", sparsity=0.4), calibration=cal, steps=2).model
    inputs = {**tiny.example_inputs(pruned, 1, seed=1), "timestep": torch.tensor([500.0]), "return_dict": False}
    stored = {}
    for name, m in (("dense", dense), ("pruned", pruned)):
        torch.onnx.export(m, (), tmp_path / f"{name}.onnx", kwargs=inputs, dynamo=True)
        graph = onnx.load(tmp_path / f"{name}.onnx")
        onnx.checker.check_model(graph)
        stored[name] = sum(math.prod(i.dims) for i in graph.graph.initializer)
    removed = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in pruned.parameters())
    assert removed > 0 and stored["dense"] - stored["pruned"] == removed


def test_a_kept_record_that_disagrees_with_the_shapes_is_one_line_in_inspect_and_lora(sdxl, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(sdxl["out"] / "unet", bad)
    config = json.loads((bad / "config.json").read_text())
    key = next(iter(config["_obsdiff_kept"]))
    entry = config["_obsdiff_kept"][key]
    config["_obsdiff_kept"][key] = {
        "of": entry["of"],
        "kept": format((1 << entry["of"]) - 1, "x").zfill(len(entry["kept"])),
    }  # keeps every unit
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"keeps {entry['of']} units") as error:
        inspect_checkpoint(str(bad))
    assert "\n" not in str(error.value)
    unet = oh.OBSDiffUNet.from_pretrained(bad)
    with pytest.raises(CheckpointError, match="the kept-indices record keeps"):
        unet.load_lora_adapter(sdxl["lora"], prefix=None)
