"""Single-file export (``obsdiff-hub export --format single-file``): the original key layouts (LDM for UNets,
Stability's for SD3 / SD3.5, Black Forest Labs' for Flux), checked against diffusers' own conversions at the tiny
configs and at the real SDXL, SD3.5 and Flux.1-dev configs; a structured export loads with
``OBSDiff*.from_single_file(FILE)`` alone, an unstructured one with the plain class too, bit for bit; the output
file is never a link, a folder or someone else's file."""

import json

import pytest
import torch
from conftest import invoke
from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_ldm_unet_checkpoint,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from safetensors.torch import load_file

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.architectures.ldm_keys import unet_to_ldm
from obsdiff_hub.architectures.original_keys import FLUX_LAYOUT, SD3_LAYOUT, to_original
from obsdiff_hub.models import build_model
from obsdiff_hub.pruning.plan import builtin_config

CAL = dict(prompts={"count": 2}, batch_size=2, steps=2, resolution=32)
RECORD = oh.provenance(recipe="tiny-test", recipe_version=1, method="obs-diff", granularity="structured", sparsity=0.4)


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    pipe = tiny.tiny_sdxl_pipeline()
    oh.prune(pipe, dict(granularity="structured", sparsity=0.4, packages=1), calibration=CAL)
    return oh.save_pruned(pipe, tmp_path_factory.mktemp("sdxl") / "pruned", record=RECORD), pipe.unet


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_a_structured_export_is_diffusers_layout_reversed_and_loads_from_the_file_alone(structured, tmp_path):
    out, unet = structured
    result = invoke("export", out, "--out", tmp_path / "sdxl.safetensors")
    assert result.exit_code == 0, result.output
    tensors = load_file(tmp_path / "sdxl.safetensors")
    assert all(k.startswith("model.diffusion_model.") for k in tensors)
    same(convert_ldm_unet_checkpoint(tensors, dict(unet.config)), unet.state_dict())  # diffusers' own reading
    loaded = oh.OBSDiffUNet.from_single_file(tmp_path / "sdxl.safetensors")  # no folder, no download
    assert loaded.config["obsdiff_structure"] == unet.config["obsdiff_structure"]
    assert loaded.config["_obsdiff_kept"] == unet.config["_obsdiff_kept"]
    same(loaded.state_dict(), oh.OBSDiffUNet.from_pretrained(out, subfolder="unet").state_dict())


def test_an_unstructured_export_loads_with_the_plain_class_and_the_bases_config(tmp_path):
    torch.manual_seed(0)
    unet = tiny.tiny_sd21_unet().eval()
    dense = tmp_path / "dense"
    unet.save_pretrained(dense)
    calibration = tiny.toy_calibration([tiny.example_inputs(unet, 2)], 2)
    pruned = oh.prune(unet, dict(granularity="unstructured", sparsity=0.5), calibration=calibration, steps=2).model
    folder = oh.save_pruned(pruned, tmp_path / "pruned", record=oh.provenance(granularity="unstructured"))
    file = tmp_path / "sd21.safetensors"
    assert invoke("export", folder, "--out", file, "--dtype", "float16").exit_code == 0
    plain = UNet2DConditionModel.from_single_file(file, config=str(dense), local_files_only=True)
    expected = {k: v.half() for k, v in pruned.state_dict().items()}
    same({k: v.half() for k, v in plain.state_dict().items()}, expected)
    assert load_file(file)["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_the_real_sdxl_config_round_trips_through_diffusers_conversion():
    model = build_model(builtin_config("sdxl-base-1.0.unet"))  # meta device: names and shapes only
    state = model.state_dict()
    exported = unet_to_ldm(state, dict(model.config))
    assert len(exported) == len(state) == 1680
    back = convert_ldm_unet_checkpoint(exported, dict(model.config))
    assert back.keys() == state.keys()
    assert all(back[k] is state[k] for k in state)  # the same tensor under its own name


def test_export_refuses_what_it_must_not_write_or_read(structured, tmp_path):
    out, _ = structured
    victim = tmp_path / "mine.safetensors"
    victim.write_bytes(b"not ours")
    refused = invoke("export", out, "--out", victim, "--overwrite")
    assert refused.exit_code != 0 and "not a file obsdiff-hub exported" in refused.output
    assert victim.read_bytes() == b"not ours"
    link = tmp_path / "link.safetensors"
    link.symlink_to(victim)
    assert "is a link" in invoke("export", out, "--out", link, "--overwrite").output
    assert victim.read_bytes() == b"not ours" and link.is_symlink()
    first = invoke("export", out, "--out", tmp_path / "a.safetensors")
    assert first.exit_code == 0
    again = invoke("export", out, "--out", tmp_path / "a.safetensors")
    assert again.exit_code != 0 and "pass `overwrite`" in again.output or "--overwrite" in again.output
    assert invoke("export", out, "--out", tmp_path / "a.safetensors", "--overwrite").exit_code == 0
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    wrong = invoke("export", vae, "--out", tmp_path / "vae.safetensors")
    assert wrong.exit_code != 0 and "not AutoencoderKL" in wrong.output and len(wrong.output.strip().splitlines()) == 1
    assert not (tmp_path / "vae.safetensors").exists()


def test_a_forged_config_in_the_metadata_is_one_line(structured, tmp_path):
    out, _ = structured
    invoke("export", out, "--out", tmp_path / "x.safetensors")
    tensors = load_file(tmp_path / "x.safetensors")
    from safetensors.torch import save_file

    deep = "[" * 200 + "]" * 200
    save_file(tensors, tmp_path / "deep.safetensors", metadata={"obsdiff_config": deep})
    with pytest.raises(oh.CheckpointError, match="not valid JSON"):
        oh.OBSDiffUNet.from_single_file(tmp_path / "deep.safetensors")
    config = json.loads((out / "unet" / "config.json").read_text())
    config["obsdiff_structure"] = {k: 1 for k in config["obsdiff_structure"]}  # shapes the weights do not have
    save_file(tensors, tmp_path / "lie.safetensors", metadata={"obsdiff_config": json.dumps(config)})
    with pytest.raises(oh.CheckpointError, match="does not match its own config"):
        oh.OBSDiffUNet.from_single_file(tmp_path / "lie.safetensors")


def _pruned_transformer(family: str, granularity: str, folder):
    torch.manual_seed(0)
    model = (tiny.tiny_sd3_transformer("sd35-medium") if family == "sd3" else tiny.tiny_flux_transformer()).eval()
    dense = folder / "dense"
    model.save_pretrained(dense)
    calibration = tiny.toy_calibration([tiny.example_inputs(model, 2)], 2)
    pruned = oh.prune(model, dict(granularity=granularity, sparsity=0.4), calibration=calibration, steps=2).model
    return oh.save_pruned(pruned, folder / "pruned", record=oh.provenance(granularity=granularity)), dense


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_structured_transformer_export_loads_from_the_file_alone(family, tmp_path):
    folder, _ = _pruned_transformer(family, "structured", tmp_path)
    file = tmp_path / f"{family}.safetensors"
    result = invoke("export", folder, "--out", file)
    assert result.exit_code == 0, result.output
    cls = oh.OBSDiffSD3Transformer if family == "sd3" else oh.OBSDiffFluxTransformer
    expected = cls.from_pretrained(folder)
    assert expected.config["obsdiff_structure"]  # heads and neurons really were removed
    loaded = cls.from_single_file(file)
    assert loaded.config["obsdiff_structure"] == expected.config["obsdiff_structure"]
    assert loaded.config["_obsdiff_kept"] == expected.config["_obsdiff_kept"]
    same(loaded.state_dict(), expected.state_dict())
    if family == "sd3":  # qkv chunks into equal thirds whatever the kept heads: diffusers' own reader takes it
        same(convert_sd3_transformer_checkpoint_to_diffusers(load_file(file)), expected.state_dict())
    with pytest.raises(oh.CheckpointError, match="which OBSDiffUNet cannot load"):
        oh.OBSDiffUNet.from_single_file(file)


def test_an_unstructured_sd3_export_loads_with_the_plain_class(tmp_path):
    folder, dense = _pruned_transformer("sd3", "unstructured", tmp_path)
    file = tmp_path / "sd3.safetensors"
    assert invoke("export", folder, "--out", file).exit_code == 0
    assert all(k.startswith("model.diffusion_model.joint_blocks.") or "blocks" not in k for k in load_file(file))
    plain = SD3Transformer2DModel.from_single_file(file, config=str(dense), local_files_only=True)
    same(plain.state_dict(), oh.OBSDiffSD3Transformer.from_pretrained(folder).state_dict())


@pytest.mark.parametrize(
    "name, layout, convert",
    [
        ("sd35-large.transformer", SD3_LAYOUT, convert_sd3_transformer_checkpoint_to_diffusers),
        ("sd35-medium.transformer", SD3_LAYOUT, convert_sd3_transformer_checkpoint_to_diffusers),
        ("flux1-dev.transformer", FLUX_LAYOUT, convert_flux_transformer_checkpoint_to_diffusers),
    ],
)
def test_the_real_transformer_configs_round_trip_through_diffusers_conversion(name, layout, convert):
    model = build_model(builtin_config(name))  # meta device: names and shapes only
    state = model.state_dict()
    exported = to_original(model, layout)
    assert len(exported) < len(state)  # q, k, v (and Flux's single-block MLP input) fused
    back = convert(dict(exported))
    assert back.keys() == state.keys()
    assert all(back[k].shape == state[k].shape for k in state)


def test_export_never_reads_through_a_link_out_of_the_checkpoint(tmp_path):
    folder, _ = _pruned_transformer("sd3", "unstructured", tmp_path)
    outside = tmp_path / "outside.safetensors"
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.rename(outside)
    weights.symlink_to(outside)
    refused = invoke("export", folder, "--out", tmp_path / "x.safetensors")
    assert refused.exit_code != 0 and "outside" in refused.output and "refusing to read it" in refused.output
    assert not (tmp_path / "x.safetensors").exists()
