import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    SD3Transformer2DModel,
    StableDiffusionXLPipeline,
)

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.architectures import architecture_of
from obsdiff_hub.errors import CheckpointError
from obsdiff_hub.models import BASE_CLASSES

STEPS = 2
RECORD = oh.provenance(recipe="tiny-test", recipe_version=1, method="obs-diff", granularity="structured", sparsity=0.3)


def pruned_denoiser(family, granularity="structured", **extra):
    torch.manual_seed(0)
    model = tiny.TINY_DENOISERS[family]().eval()
    cal = tiny.toy_calibration([tiny.example_inputs(model, 2)], STEPS)
    return oh.prune(model, dict(granularity=granularity, sparsity=0.3, **extra), calibration=cal, steps=STEPS).model


def outputs(model):
    inputs = tiny.example_inputs(model, 1, seed=7)
    with torch.no_grad():
        return tiny.run_denoiser(model, inputs, 400.0)


def assert_same_forward(a, b):
    """Forward outputs agree to a tight tolerance (CPU kernels differ in the last bit with alignment)."""
    torch.testing.assert_close(outputs(a), outputs(b), rtol=1e-5, atol=1e-6)


def assert_same_weights(a, b):
    """Weights agree bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module", params=list(tiny.TINY_DENOISERS))
def saved(request, tmp_path_factory):
    model = pruned_denoiser(request.param)
    out = oh.save_pruned(model, tmp_path_factory.mktemp(request.param) / "ckpt", record=RECORD)
    return model, out


def test_round_trip_bit_exact_default_and_device_map(saved):
    model, out = saved
    cls = type(model)
    assert cls.__name__.startswith("OBSDiff")
    for kwargs in ({}, {"device_map": "cpu"}, {"low_cpu_mem_usage": False}):
        loaded = cls.from_pretrained(out, **kwargs).eval()
        assert type(loaded) is cls
        assert_same_weights(loaded, model)
        assert_same_forward(loaded, model)


def test_round_trip_fp16_variant_and_shards(saved, tmp_path):
    model, _ = saved
    cls = type(model)
    fp16_dir = oh.save_pruned(model, tmp_path / "fp16", record=RECORD, variant="fp16", torch_dtype=torch.float16)
    assert (fp16_dir / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = cls.from_pretrained(fp16_dir, variant="fp16", dtype=torch.float16)
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p.to(torch.float16) if p.is_floating_point() else p), name
    sharded = oh.save_pruned(model, tmp_path / "shards", record=RECORD, max_shard_size="100KB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1 and (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_same_weights(cls.from_pretrained(sharded), model)
    for shard in shards:
        meta = oh.read_metadata(sharded / shard)
        assert meta["recipe"] == "tiny-test" and meta["obsdiff_hub_version"] == oh.__version__


def test_config_records_structure_and_provenance(saved):
    model, out = saved
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == type(model).__name__
    assert config["_obsdiff_provenance"] == {
        **RECORD,
        "kept_indices": f"{len(config['_obsdiff_kept'])} pruned modules, in config _obsdiff_kept",
    }
    assert (
        config["obsdiff_structure"] == model.config["obsdiff_structure"]
        and config["_obsdiff_kept"] == model.config["_obsdiff_kept"]
    )
    assert any(v < 4 for k, v in config["obsdiff_structure"].items() if "attn" in k)


def test_importing_leaves_diffusers_classes_as_diffusers_ships_them():
    import subprocess
    import sys

    probe = (
        "import diffusers; from diffusers import UNet2DConditionModel as U, SD3Transformer2DModel as S, "
        "FluxTransformer2DModel as F;"
        "before = [c.from_pretrained.__func__ for c in (U, S, F, diffusers.ModelMixin)];"
        "import obsdiff_hub;"
        "after = [c.from_pretrained.__func__ for c in (U, S, F, diffusers.ModelMixin)];"
        "assert all(a is b for a, b in zip(before, after)), 'patched';"
        "assert not any('from_pretrained' in c.__dict__ for c in (U, S, F)), 'overridden';"
        "print('untouched')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "untouched", done.stderr[-2000:]


def test_plain_class_on_a_structured_checkpoint_is_explained_by_diffusers_and_inspect(saved):
    from typer.testing import CliRunner

    from obsdiff_hub.cli import app

    model, out = saved
    base = next(c for c in BASE_CLASSES if isinstance(model, c))
    with pytest.raises(ValueError, match=r"Cannot load .* because [\w.]+\.(weight|bias) expected shape"):
        base.from_pretrained(out)
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and f"load with obsdiff_hub.{type(model).__name__}" in shown.output


def test_unstructured_is_its_obsdiff_class_and_loads_with_the_plain_diffusers_class_too(tmp_path):
    model = pruned_denoiser("sd3", granularity="unstructured")
    out = oh.save_pruned(model, tmp_path / "u", record=RECORD)
    assert type(model) is oh.OBSDiffSD3Transformer  # so fuse_lora warns and verify=True applies by default
    assert json.loads((out / "config.json").read_text())["_class_name"] == "OBSDiffSD3Transformer"
    assert_same_weights(oh.OBSDiffSD3Transformer.from_pretrained(out).eval(), model)
    loaded = SD3Transformer2DModel.from_pretrained(out).eval()
    assert_same_weights(loaded, model)
    assert loaded.config["_obsdiff_provenance"]["method"] == "obs-diff"


def test_an_unstructured_pipeline_names_its_obsdiff_class(tmp_path):
    pipe = tiny.tiny_sdxl_pipeline()
    cal = dict(prompts={"count": 2}, batch_size=2, steps=2, resolution=32)
    oh.prune(pipe, dict(granularity="unstructured", sparsity=0.5, packages=1), calibration=cal)
    out = oh.save_pruned(pipe, tmp_path / "pruned", record=RECORD)
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["obsdiff_hub.models", "OBSDiffUNet"]
    loaded = DiffusionPipeline.from_pretrained(out)
    assert type(loaded.unet) is oh.OBSDiffUNet
    assert_same_weights(loaded.unet, pipe.unet)


def test_pipeline_reloads_with_diffusion_pipeline_and_as_component(tmp_path):
    pipe = tiny.tiny_sdxl_pipeline()
    base_dir = tmp_path / "base"
    pipe.save_pretrained(base_dir)
    cal = dict(prompts={"count": 2}, batch_size=2, steps=2, resolution=32)
    oh.prune(pipe, dict(granularity="structured", sparsity=0.3, packages=1), calibration=cal)
    out = oh.save_pruned(pipe, tmp_path / "pruned", record=RECORD)
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["obsdiff_hub.models", "OBSDiffUNet"]

    def latents(p):
        return p(
            "a red circle",
            num_inference_steps=2,
            height=32,
            width=32,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).images

    expected = latents(pipe)
    reloaded = DiffusionPipeline.from_pretrained(out)
    assert type(reloaded.unet) is oh.OBSDiffUNet
    assert_same_weights(reloaded.unet, pipe.unet)
    torch.testing.assert_close(latents(reloaded), expected, rtol=1e-5, atol=1e-5)
    swapped = StableDiffusionXLPipeline.from_pretrained(
        base_dir, unet=oh.OBSDiffUNet.from_pretrained(out, subfolder="unet")
    )
    torch.testing.assert_close(latents(swapped), expected, rtol=1e-5, atol=1e-5)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = pruned_denoiser("flux")
    from obsdiff_hub.checkpoints import saving

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saving, "write_safetensors_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        oh.save_pruned(model, tmp_path / "out", record=RECORD)
    assert os.listdir(tmp_path) == []


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        oh.save_pruned(pruned_denoiser("sd3"), tmp_path / "out")


@pytest.fixture()
def structured_dir(tmp_path):
    model = pruned_denoiser("sdxl")
    out = oh.save_pruned(model, tmp_path / "ckpt", record=RECORD, max_shard_size="200KB")
    return type(model), out


def test_truncated_file_names_the_file(structured_dir):
    cls, out = structured_dir
    shard = sorted(out.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated or corrupted"):
        cls.from_pretrained(out)


def test_missing_shard_names_the_shard(structured_dir):
    cls, out = structured_dir
    shard = sorted(out.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name}: shard listed in .* is missing"):
        cls.from_pretrained(out)


def test_config_disagreeing_with_weights_names_module(structured_dir):
    cls, out = structured_dir
    config = json.loads((out / "config.json").read_text())
    key = next(k for k in config["obsdiff_structure"] if k.endswith("attn1"))
    config["obsdiff_structure"][key] = 4  # the dense count, but the file holds the pruned rows
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"module {key}\.to_\w+: config builds"):
        cls.from_pretrained(out)


@pytest.mark.parametrize(
    "name,blocks,expected",
    [
        ("sdxl-base-1.0.unet", None, {0.1: 2.35, 0.15: 2.24, 0.2: 2.13, 0.25: 2.02, 0.3: 1.91}),
        ("sd35-large.transformer", list(range(1, 37)), {0.15: 7.28, 0.2: 7.02, 0.25: 6.76, 0.3: 6.54}),
        ("sd3-medium.transformer", list(range(1, 23)), {0.1: 1.91, 0.15: 1.83, 0.2: 1.78, 0.25: 1.72}),
    ],
)
def test_plan_reproduces_published_parameter_counts(name, blocks, expected):
    dense = {"sdxl-base-1.0.unet": 2.57, "sd35-large.transformer": 8.06, "sd3-medium.transformer": 2.03}[name]
    for ratio, billions in expected.items():
        result = oh.plan(name, {"granularity": "structured", "sparsity": ratio, "blocks": blocks}, resolution=None)
        assert round(result.params_before / 1e9, 2) == dense
        assert round(result.params_after / 1e9, 2) == billions, ratio


def test_plan_flops_shrink_with_structure():
    result = oh.plan(
        "sd3-medium.transformer",
        {"granularity": "structured", "sparsity": 0.2, "blocks": list(range(1, 23))},
        resolution=512,
    )
    assert 0.1 < result.flop_reduction < 0.3
    assert result.heads_removed == 22 * round(24 * 0.2) and result.neurons_removed > 0


@pytest.mark.parametrize(
    "family,settings",
    [("sd3", dict(granularity="unstructured", sparsity=0.5)), ("sdxl", dict(granularity="n:m", n=2, m=4))],
)
def test_plan_counts_exactly_the_zeros_a_run_leaves(family, settings):
    torch.manual_seed(0)
    model = tiny.TINY_DENOISERS[family]().eval()
    config = {**model.config, "_class_name": type(model).__name__}
    architecture = architecture_of(model)
    layers = [
        p for unit in architecture.units(model, None, structured=False) for site in unit.sites for p in site.layers
    ]
    cal = tiny.toy_calibration([tiny.example_inputs(model, 2)], STEPS)
    pruned = oh.prune(model, dict(settings), calibration=cal, steps=STEPS).model
    zeros = sum(int((pruned.get_submodule(p).weight == 0).sum()) for p in layers)
    expected = oh.plan(config, settings, resolution=None)
    assert expected.zeroed_weights == zeros > 0
    assert expected.params_after == expected.params_before == sum(p.numel() for p in pruned.parameters())


def test_sparse_kernels_detects_pattern_and_refuses_cpu(tmp_path):
    from obsdiff_hub.architectures.sparse_kernels import is_2_of_4

    model = pruned_denoiser("sd3", granularity="n:m", n=2, m=4)
    assert is_2_of_4(model.transformer_blocks[1].ff.net[2].weight)
    assert not is_2_of_4(model.proj_out.weight)  # not a targeted layer: dense
    out = oh.save_pruned(model, tmp_path / "nm", record=RECORD)
    with pytest.raises(oh.UnsupportedEnvironmentError, match="needs the model on a CUDA GPU"):
        oh.OBSDiffSD3Transformer.from_pretrained(out, sparse_kernels=True)


def test_a_saved_pipeline_loads_in_one_dtype_and_samples(tmp_path):
    """The shapes model ships fp16 text encoder and VAE; the run saves the UNet in fp32. A
    pipeline of mixed dtypes cannot sample, so every component is saved in the output dtype."""
    from obsdiff_hub.shapes.pipeline import load_shapes_pipeline

    pipe = load_shapes_pipeline(torch.float16)
    out = oh.save_pruned(pipe, tmp_path / "o", torch_dtype=torch.float32)
    loaded = DiffusionPipeline.from_pretrained(out)
    dtypes = {n: next(c.parameters()).dtype for n, c in loaded.components.items() if isinstance(c, torch.nn.Module)}
    assert set(dtypes.values()) == {torch.float32}, dtypes
    images = loaded(
        "a small red circle on the left", num_inference_steps=2, height=32, width=32, output_type="latent"
    ).images
    assert torch.isfinite(images).all()


def test_the_same_tensors_and_metadata_give_the_same_file_bytes_in_every_process(tmp_path):
    """safetensors keeps metadata in a hash map ordered differently in each process; the writer
    sorts it, so a checkpoint rebuilt from its recipe has the same sha256 (and manifest)."""
    script = (
        "import sys, torch; from pathlib import Path\n"
        "from obsdiff_hub.storage.files import write_safetensors_file\n"
        "g = torch.Generator().manual_seed(0)\n"
        "tensors = {'w': torch.randn(4, 8, generator=g), 'b': torch.arange(5, dtype=torch.int32)}\n"
        "write_safetensors_file(Path(sys.argv[1]), tensors, {f'field{i}': f'value {i} ü' for i in range(24)})\n"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path in files:
        subprocess.run(
            [sys.executable, "-c", script, str(path)], check=True, env={**os.environ, "PYTHONHASHSEED": "random"}
        )
    assert len({p.read_bytes() for p in files}) == 1
    assert oh.read_metadata(files[0]) == {f"field{i}": f"value {i} ü" for i in range(24)}
