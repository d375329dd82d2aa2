"""Offloaded pruning (``prune.offload``): blocks in host memory or in one safetensors file per block, onloaded as
they run. The reference is the same run with every weight resident: masks and weights must be bit for bit the
same (the solves see the same fp32 values; only where the tensors live changes), for every family and
granularity, from a model in memory or a base opened lazily from disk, through saving, the CLI and resume. Peak
memory is measured in a subprocess on a model bigger than the budget it must stay under."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import invoke
from interrupts import interrupt_after_first_package
from safetensors.torch import load_file, save_file

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.models import build_model
from obsdiff_hub.models.lazy import open_offloaded
from obsdiff_hub.models.offload import offload_of
from obsdiff_hub.zoo import resume

GRANULARITIES = {
    "unstructured": dict(granularity="unstructured", sparsity=0.4),
    "2:4": dict(granularity="n:m", n=2, m=4),
    "structured": dict(granularity="structured", sparsity=0.4),
}


def stored_state(model):
    """Every tensor of ``model`` as stored: offloaded blocks read from their store, the rest from the model."""
    offloaded = offload_of(model)
    names = list(model.state_dict())
    return offloaded.read(model, names) if offloaded is not None else model.state_dict()


def same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key].cpu(), b[key].cpu()), key


def on(device, inputs):
    return {
        k: v.to(device) if isinstance(v, torch.Tensor) else {kk: vv.to(device) for kk, vv in v.items()}
        for k, v in inputs.items()
    }


def pruned(family, settings, mode, folder, device="cpu"):
    torch.manual_seed(0)
    model = tiny.TINY_DENOISERS[family]().eval()
    calibration = tiny.toy_calibration([on(device, tiny.example_inputs(model, 2, seed=1))], 2)
    config = {**settings, "packages": 2, "offload": mode}
    return oh.prune(model, config, calibration=calibration, steps=2, device=device, offload_folder=folder)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_offloaded_runs_equal_the_resident_run_bit_for_bit(family, granularity, device, tmp_path):
    settings = GRANULARITIES[granularity]
    resident = pruned(family, settings, "none", None, device)
    reference = stored_state(resident.model)
    results = {}
    for mode in ("blocks", "blocks-to-disk"):
        result = results[mode] = pruned(family, settings, mode, tmp_path / mode, device)
        same(stored_state(result.model), reference)
        assert [r.kept for r in result.report.structure] == [r.kept for r in resident.report.structure]
        assert result.report.stages["offload_s"] > 0 and result.report.package_plan["offload"] == mode
    host = results["blocks"].model
    assert offload_of(host) is None and not any(p.is_meta for p in host.parameters())  # back in host memory
    disk = results["blocks-to-disk"].model
    assert len(list((tmp_path / "blocks-to-disk").glob("block-*.safetensors"))) == len(offload_of(disk).paths)
    assert all(p.is_meta for path in offload_of(disk).paths for p in disk.get_submodule(path).parameters())


def test_a_lazily_opened_base_prunes_saves_and_reloads_exactly(tmp_path):
    """A bf16 base in shards on disk, opened without reading its blocks: the result equals the resident run's,
    is written shard by shard from the blocks' files, and its forward matches the reloaded checkpoint."""
    torch.manual_seed(0)
    model = tiny.tiny_sd3_transformer().eval()
    calibration = tiny.toy_calibration([tiny.example_inputs(model, 2, seed=1)], 2)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "base", max_shard_size="100KB")
    assert len(list((tmp_path / "base").glob("*.safetensors"))) > 2
    settings = dict(granularity="structured", sparsity=0.4)
    resident = oh.prune(model, settings, calibration=calibration, steps=2).model
    lazy = open_offloaded(tmp_path / "base", "blocks-to-disk", tmp_path / "off")
    assert all(p.is_meta for p in lazy.transformer_blocks.parameters())
    assert not list((tmp_path / "off").glob("*"))  # nothing copied: the blocks read the base's own files
    for shard in (tmp_path / "base").glob("*.safetensors"):  # swapped under the run: it reads what it checked
        shard.unlink()
        (tmp_path / "outside.safetensors").write_bytes(b"")
        shard.symlink_to(tmp_path / "outside.safetensors")
    result = oh.prune(lazy, {**settings, "offload": "blocks-to-disk"}, calibration=calibration, steps=2).model
    same(stored_state(result), resident.state_dict())
    out = oh.save_pruned(result, tmp_path / "saved")
    reloaded = oh.OBSDiffSD3Transformer.from_pretrained(out, torch_dtype=torch.bfloat16)
    same(reloaded.state_dict(), resident.state_dict())
    inputs = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny.example_inputs(model, 1).items()
    }
    with torch.no_grad():
        torch.testing.assert_close(
            tiny.run_denoiser(result, inputs, 500.0), tiny.run_denoiser(reloaded, inputs, 500.0), rtol=0, atol=0
        )


def test_offload_refuses_what_it_cannot_keep_exact_in_one_line(tmp_path):
    model = tiny.tiny_sd3_transformer().to(torch.float16)
    calibration = tiny.toy_calibration([tiny.example_inputs(model, 2)], 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(oh.InputError, match="holds the float16 checkpoint's values"):
        oh.prune(model, dict(offload="blocks"), calibration=calibration, steps=2, dtype="bfloat16")
    assert offload_of(model) is None  # refused before anything was moved
    same(model.state_dict(), before)
    with pytest.raises(oh.InputError, match="Hessian store"):
        oh.prune(model, dict(offload="blocks"), calibration=calibration, steps=2, save_hessians=tmp_path / "h")
    with pytest.raises(oh.InputError, match="needs a folder"):
        oh.prune(tiny.tiny_sd3_transformer(), dict(offload="blocks-to-disk"), calibration=calibration, steps=2)
    with pytest.raises(Exception, match="calibration_target 'self'"):
        oh.PruneConfig(offload="blocks", calibration_target="dense")


def test_the_cli_prunes_a_base_folder_offloaded_to_disk_and_resumes(tmp_path, monkeypatch):
    """``--offload blocks-to-disk`` on a base folder (opened lazily) equals the resident run; interrupted after
    its first package, ``--resume`` finishes it to the same weights, and nothing is left beside the output."""
    base = tiny.save_tiny_pipeline("sdxl", tmp_path / "base")
    common = ("prune", "-r", "tiny-sdxl-structured-30", "--base", base, "--quiet")
    straight = invoke(*common, "--out", tmp_path / "straight")
    assert straight.exit_code == 0, straight.output
    original = interrupt_after_first_package(monkeypatch)
    crashed = invoke(*common, "--out", tmp_path / "off", "--offload", "blocks-to-disk")
    assert crashed.exit_code == 130, crashed.output
    assert list((tmp_path / "off.partial" / "offload").glob("block-*.safetensors"))
    monkeypatch.setattr(resume.DiskState, "package_done", original)
    resumed = invoke(*common, "--out", tmp_path / "off", "--offload", "blocks-to-disk", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert not (tmp_path / "off.partial").exists()
    a, b = (load_file(tmp_path / n / "unet" / "diffusion_pytorch_model.safetensors") for n in ("straight", "off"))
    same(a, b)
    configs = [json.loads((tmp_path / n / "unet" / "config.json").read_text()) for n in ("straight", "off")]
    assert configs[0]["_obsdiff_kept"] and configs[1]["_obsdiff_kept"] == configs[0]["_obsdiff_kept"]
    report = json.loads((tmp_path / "off" / "report.json").read_text())
    assert report["config"]["offload"] == "blocks-to-disk" and report["peak_host_bytes"] > 0


WIDE = dict(  # an SD3-shaped model of 40 blocks at width 768: 845 M parameters, 1.69 GB in bf16
    _class_name="SD3Transformer2DModel",
    sample_size=16,
    patch_size=2,
    in_channels=4,
    num_layers=40,
    attention_head_dim=64,
    num_attention_heads=12,
    joint_attention_dim=64,
    caption_projection_dim=768,
    pooled_projection_dim=32,
    out_channels=4,
    pos_embed_max_size=16,
)

MEASURE = """
import json, sys, torch
from pathlib import Path
import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.models import build_model
from obsdiff_hub.models.lazy import open_offloaded
folder = Path(sys.argv[1])
def status(field):  # VmHWM, not ru_maxrss: that starts from the parent's size at fork
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
inputs = tiny.example_inputs(build_model(json.loads((folder / "base" / "config.json").read_text())), 2, seed=1)
start = status("VmRSS")
model = open_offloaded(folder / "base", "blocks-to-disk", folder / "off")
calibration = tiny.toy_calibration([inputs], 2)
settings = dict(granularity="unstructured", sparsity=0.5, blocks=[0], offload="blocks-to-disk")
result = oh.prune(model, settings, calibration=calibration, steps=2, offload_folder=folder / "off")
oh.save_pruned(result.model, folder / "pruned", max_shard_size="200MB")
peak = status("VmHWM")
plan = result.report.package_plan["predicted_peak_bytes"]
print(json.dumps({"start": start, "peak": peak, "reported": result.report.peak_host_bytes, "plan": plan}))
"""


def test_blocks_to_disk_prunes_a_model_in_half_its_size_of_memory(tmp_path):
    """The whole run (opening the base, calibration through every block, the solve, saving) in a fresh process:
    peak RSS above the process's own start stays under half the weights' size."""
    skeleton = build_model(WIDE)
    state = skeleton.state_dict()
    torch.manual_seed(0)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(WIDE))
    names = sorted(state)
    shards = [names[i::6] for i in range(6)]
    weights = 0
    for i, shard in enumerate(shards, 1):
        tensors = {n: (torch.randn(state[n].shape) * 0.02).to(torch.bfloat16) for n in shard}
        weights += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, base / f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors")
        del tensors
    assert weights > 1.6e9
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["peak"] - measured["start"] < 0.5 * weights, (measured, weights)
    assert measured["start"] < measured["reported"] <= measured["peak"]  # report.json's peak_host_bytes: the run's
    saved, seen = {}, 0
    for file in sorted((tmp_path / "pruned").glob("*.safetensors")):  # one shard at a time
        for key, tensor in load_file(file).items():
            saved[key] = tensor.shape
            if key.startswith("transformer_blocks.0.") and key.endswith(("to_q.weight", "ff.net.2.weight")):
                assert float((tensor == 0).float().mean()) == 0.5
                seen += 1
    assert saved == {k: v.shape for k, v in state.items()} and seen == 2
    base_tensors = {k: v for f in sorted(base.glob("*.safetensors")) for k, v in load_file(f).items()}
    untouched = [k for k in base_tensors if k.startswith("transformer_blocks.9.")]
    pruned_files = {k: f for f in sorted((tmp_path / "pruned").glob("*.safetensors")) for k in load_file(f)}
    for key in untouched[:4]:  # a block the run did not prune is stored exactly as the base had it
        assert torch.equal(load_file(pruned_files[key])[key], base_tensors[key])


def test_runs_sharing_an_offload_folder_keep_their_own_blocks(tmp_path):
    first = pruned("sd3", GRANULARITIES["unstructured"], "blocks-to-disk", tmp_path / "shared").model
    kept = {k: v.clone() for k, v in stored_state(first).items()}
    pruned("sd3", GRANULARITIES["structured"], "blocks-to-disk", tmp_path / "shared")  # the same folder again
    same(stored_state(first), kept)
    first.to(torch.float16)  # a dtype change reaches the blocks when they are read (saved, or run)
    assert {v.dtype for v in stored_state(first).values() if v.is_floating_point()} == {torch.float16}


def test_a_lazily_opened_base_is_checked_whole_before_any_work(tmp_path):
    """Shapes are read from every header at open (a wrong block is one line then, not mid-calibration); a tensor
    stored in another dtype outside the blocks is cast to the checkpoint's, as a resident load does."""
    torch.manual_seed(0)
    model = tiny.tiny_sd3_transformer().eval()
    calibration = tiny.toy_calibration([tiny.example_inputs(model, 2, seed=1)], 2)
    model.save_pretrained(tmp_path / "base")
    tensors = load_file(tmp_path / "base" / "diffusion_pytorch_model.safetensors")
    tensors["pos_embed.proj.weight"] = tensors["pos_embed.proj.weight"].half()
    save_file(tensors, tmp_path / "base" / "diffusion_pytorch_model.safetensors")
    settings = dict(granularity="unstructured", sparsity=0.5, offload="blocks-to-disk")
    lazy = open_offloaded(tmp_path / "base", "blocks-to-disk", tmp_path / "off")
    assert lazy.pos_embed.proj.weight.dtype == torch.float32
    result = oh.prune(lazy, settings, calibration=calibration, steps=2, offload_folder=tmp_path / "off").model
    model.pos_embed.proj.weight.data = model.pos_embed.proj.weight.data.half().float()
    resident = oh.prune(model, {**settings, "offload": "none"}, calibration=calibration, steps=2).model
    same(stored_state(result), resident.state_dict())
    tensors["transformer_blocks.1.attn.to_q.weight"] = torch.zeros(65, 32)
    save_file(tensors, tmp_path / "base" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(oh.CheckpointError, match=r"to_q.weight has shape \[65, 32\], its config builds \[32, 32\]"):
        open_offloaded(tmp_path / "base", "blocks-to-disk", tmp_path / "off2")


def test_a_refused_offloaded_run_leaves_the_model_and_the_output_folder_as_they_were(tmp_path):
    model = tiny.tiny_sd3_transformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = tiny.toy_calibration([tiny.example_inputs(model, 2)], 2)
    with pytest.raises(oh.InputError, match="block 99 is out of range"):
        oh.prune(
            model,
            dict(blocks=[99], offload="blocks-to-disk"),
            calibration=calibration,
            steps=2,
            offload_folder=tmp_path / "off",
        )
    assert offload_of(model) is None and not (tmp_path / "off").exists()
    same(model.state_dict(), before)
    base = tiny.save_tiny_pipeline("sdxl", tmp_path / "base")
    refused = invoke(
        "prune",
        "-r",
        "tiny-sdxl-structured-30",
        "--base",
        base,
        "--offload",
        "blocks-to-disk",
        "--set",
        "prune.blocks=[99]",
        "--out",
        tmp_path / "out",
    )
    assert refused.exit_code == 2 and "block 99 is out of range" in refused.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
