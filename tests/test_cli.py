import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DiffusionPipeline, SD3Transformer2DModel
from interrupts import interrupt_after_first_package, interrupted_after_pruning
from safetensors.torch import load_file
from typer.testing import CliRunner

import obsdiff_hub as oh
import obsdiff_hub.tiny  # noqa: F401 - oh.tiny
from obsdiff_hub.cli import app
from obsdiff_hub.pruning.config import PruneConfig
from obsdiff_hub.zoo import resume
from obsdiff_hub.zoo.recipes import load_recipe, recipe_names

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
TINY = ["tiny-sdxl-structured-30", "tiny-sd3-unstructured-50", "tiny-flux-2of4"]


def invoke(*args, **env):
    return runner.invoke(app, [str(a) for a in args], env=env or None)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def denoiser_weights(directory: Path) -> dict[str, torch.Tensor]:
    folder = directory / ("unet" if (directory / "unet").is_dir() else "transformer")
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("name", TINY)
def test_tiny_recipe_end_to_end_loads_with_from_pretrained(name, tmp_path):
    result = invoke("prune", "--recipe", name, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output == f"{tmp_path / 'out'}\n"
    out = tmp_path / "out"
    assert {"recipe.yaml", "report.json", "README.md", "model_index.json"} <= {p.name for p in out.iterdir()}
    assert not (tmp_path / "out.partial").exists()
    recipe = load_recipe(name)
    effective = load_recipe(out / "recipe.yaml")
    assert effective.derived_from.sha256 == recipe.sha256 and effective.name == recipe.name
    assert effective.prune == recipe.prune.model_copy(update={"packages": effective.prune.packages})
    assert (
        effective.calibration.prompts.count == recipe.calibration.prompts.count
        and effective.calibration.prompts.sha256
    )
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["recipe_sha256"] == effective.sha256
    pipe = DiffusionPipeline.from_pretrained(out)
    denoiser = getattr(pipe, recipe.base_model.component)
    for layer in report["layers"]:
        W = denoiser.get_submodule(layer["name"]).weight
        if recipe.prune.granularity == "n:m":
            assert ((W == 0).view(W.shape[0], -1, 4).sum(-1) == 2).all()
        elif recipe.prune.granularity == "unstructured":
            assert abs(float((W == 0).float().mean()) - 0.5) < 0.01
    if recipe.prune.granularity == "structured":
        assert type(denoiser).__name__ == "OBSDiffUNet"
        assert sum(p.numel() for p in denoiser.parameters()) == report["params_after"] < report["params_before"]
    images = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="latent").images
    assert torch.isfinite(images).all()


def test_resume_after_interruption_equals_straight_run(tmp_path, monkeypatch):
    straight = invoke("prune", "--recipe", "tiny-sdxl-structured-30", "--out", tmp_path / "straight", "--quiet")
    assert straight.exit_code == 0, straight.output
    original = interrupt_after_first_package(monkeypatch)
    crashed = invoke("prune", "--recipe", "tiny-sdxl-structured-30", "--out", tmp_path / "resumed", "--quiet")
    assert (
        crashed.exit_code == 130
        and "progress of 1 finished package(s) is saved" in crashed.output
        and "--resume" in crashed.output
    )
    assert not (tmp_path / "resumed").exists()
    assert json.loads((tmp_path / "resumed.partial" / "progress.json").read_text())["completed"] == 1
    monkeypatch.setattr(resume.DiskState, "package_done", original)

    saved = snapshot(tmp_path / "resumed.partial")
    refused = invoke("prune", "--recipe", "tiny-sdxl-structured-30", "--out", tmp_path / "resumed", "--quiet")
    assert refused.exit_code == 2 and "pass --resume to continue or --restart to discard it" in refused.output
    assert snapshot(tmp_path / "resumed.partial") == saved

    resumed = invoke(
        "prune", "--recipe", "tiny-sdxl-structured-30", "--out", tmp_path / "resumed", "--quiet", "--resume"
    )
    assert resumed.exit_code == 0, resumed.output
    a, b = denoiser_weights(tmp_path / "straight"), denoiser_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    configs = [json.loads((tmp_path / n / "unet" / "config.json").read_text()) for n in ("straight", "resumed")]
    assert configs[0]["_obsdiff_kept"] and configs[1]["_obsdiff_kept"] == configs[0]["_obsdiff_kept"]
    report = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert len(report["packages"]) == 2


def test_plan_sdxl_30_prints_published_count():
    result = invoke("plan", "--recipe", "sdxl-30")
    assert result.exit_code == 0, result.output
    assert "2.57 B" in result.output and "1.91 B" in result.output


def test_plan_of_a_builtin_recipe_uses_the_model_itself():
    from obsdiff_hub.architectures import architecture_of
    from obsdiff_hub.zoo.sampling import load_pipeline

    unet = load_pipeline("builtin:tiny-shapes").unet
    weights = sum(
        unet.get_submodule(p).weight.numel()
        for u in architecture_of(unet).units(unet, None, structured=False)
        for s in u.sites
        for p in s.layers
    )
    result = invoke("plan", "--recipe", "tiny-shapes-unstructured-50", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["params_before"] == plan["params_after"] == sum(p.numel() for p in unet.parameters())
    assert plan["zeroed_weights"] == weights // 2 and plan["resolution"] == 32  # the shapes model's own size


def test_every_zoo_recipe_validates_and_has_a_stable_identity():
    names = recipe_names()
    for expected in [
        "sdxl-10",
        "sdxl-30",
        "sd35-large-15",
        "sd35-large-30",
        "sd3-medium-10",
        "sd3-medium-25",
        "sd3-medium-unstructured-50",
        "sd3-medium-unstructured-60",
        "sd35-large-2of4",
        "sd21-base-unstructured-40",
        "sd21-base-unstructured-50",
        "flux-dev-unstructured-70",
    ]:
        assert expected in names
    for name in names:
        recipe = load_recipe(name)
        assert recipe.sha256 == load_recipe(name).sha256
        assert recipe.schema_version == 2 and recipe.version >= 1
    assert load_recipe("sd35-large-30").prune.block_ids(38) == list(range(1, 37))
    assert load_recipe("sd35-large-2of4").prune.block_ids(38) == list(range(3, 26))


def test_recipes_list_and_show():
    listed = invoke("recipes", "list")
    assert listed.exit_code == 0 and "sdxl-30" in listed.output
    shown = invoke("recipes", "show", "sdxl-30")
    assert shown.exit_code == 0 and load_recipe("sdxl-30").sha256 in shown.output


def write_recipe(tmp_path, **changes):
    data = yaml.safe_load((ROOT / "recipes" / "tiny-sd3-unstructured-50.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"prune.granularity": "blocky"}, r"prune\.granularity: .*'unstructured', 'n:m' or 'structured'"),
        ({"prune.sparsity": 1.5}, r"prune\.sparsity: .*less than 1"),
        ({"prune.granularity": "n:m", "prune.n": 4, "prune.m": 2}, r"0 < n < m"),
        ({"prune.extra_knob": 3}, r"prune\.extra_knob: Extra inputs"),
        ({"schema_version": 9}, r"schema_version 9 is not supported"),
    ],
)
def test_bad_recipe_fields_exit_2_with_one_line(tmp_path, changes, message):
    result = invoke("prune", "--recipe", write_recipe(tmp_path, **changes), "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_python_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("schema_version: !!python/object/apply:os.system ['true']\n")
    result = invoke("recipes", "show", path)
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_unknown_recipe_suggests_names():
    result = invoke("prune", "--recipe", "sdxl-3")
    assert result.exit_code == 2
    assert "unknown recipe 'sdxl-3'" in result.output and "sdxl-30" in result.output


def test_recipe_for_another_family(tmp_path):
    model = oh.tiny.save_tiny_pipeline("flux", tmp_path / "flux")
    result = invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--base", model, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "is for mmdit models" in result.output and "FluxTransformer2DModel" in result.output


def test_unreadable_prompt_file_and_existing_output(tmp_path):
    result = invoke(
        "prune", "--recipe", "tiny-sd3-unstructured-50", "--prompts", tmp_path / "nope.txt", "--out", tmp_path / "o"
    )
    assert result.exit_code == 2 and "cannot read prompt file" in result.output
    (tmp_path / "exists").mkdir()
    result = invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--out", tmp_path / "exists")
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output


def test_prompt_files_all_formats(tmp_path):
    from obsdiff_hub.pruning.prompts import read_prompt_file

    (tmp_path / "p.txt").write_text("a cat\n\n a dog \n")
    (tmp_path / "p.jsonl").write_text('{"caption": "a cat"}\n{"caption": "a dog"}\n')
    (tmp_path / "p.csv").write_text("id,text\n1,a cat\n2,a dog\n")
    (tmp_path / "p.tsv").write_text("prompt\tx\na cat\t1\na dog\t2\n")
    for name in ("p.txt", "p.jsonl", "p.csv", "p.tsv"):
        assert read_prompt_file(tmp_path / name) == ["a cat", "a dog"], name


def test_the_installed_command_and_its_first_errors(tmp_path):
    """The entry point itself (a whole run through it: tests/test_main_job.py); the errors in process."""
    exe = Path(sys.executable).parent / "obsdiff-hub"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"obsdiff-hub {oh.__version__}"
    bad = invoke("prune", "--recipe", "nope")
    assert bad.exit_code == 2 and bad.output.startswith("error: unknown recipe")
    late = invoke("prune", "--recipe", "tiny-flux-2of4", "--set", "prune.sparsty=0.4", "--out", tmp_path / "g")
    assert late.exit_code == 2 and late.output.startswith("error: override: prune.sparsty")  # no blank line first


def test_progress_into_a_log_is_one_line_per_finished_step_and_packages_can_be_auto(tmp_path):
    exe = Path(sys.executable).parent / "obsdiff-hub"
    done = subprocess.run(
        [exe, "prune", "--recipe", "tiny-sd3-unstructured-50", "--packages", "auto", "--out", tmp_path / "o"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    count = report["package_plan"]["packages"]
    assert report["package_plan"]["mode"] == "auto"
    steps = [f"package {i + 1}: {stage}:" for i in range(count) for stage in ("trajectories", "solves")]
    lines = done.stderr.strip().splitlines()
    assert [line.rsplit(":", 1)[0] + ":" for line in lines] == [*steps, "packages:"], done.stderr
    assert lines[-1].startswith(f"packages: {count}/{count} (")


def test_inspect_reports_structure_and_provenance(tmp_path):
    assert invoke("prune", "--recipe", "tiny-sdxl-structured-30", "--out", tmp_path / "o", "--quiet").exit_code == 0
    result = invoke("inspect", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "tiny-sdxl-structured-30" in result.output and "attn1" in result.output and "OBSDiffUNet" in result.output


def test_generate_seeded_grid_dense_vs_pruned(tmp_path):
    from PIL import Image

    assert (
        invoke("prune", "--recipe", "tiny-sdxl-structured-30", "--out", tmp_path / "pruned", "--quiet").exit_code == 0
    )
    dense = oh.tiny.save_tiny_pipeline("sdxl", tmp_path / "dense")
    args = [
        "generate",
        tmp_path / "pruned",
        "--base",
        dense,
        "--prompt",
        "a red circle",
        "--prompt",
        "a blue square",
        "--num-inference-steps",
        "2",
        "--resolution",
        "32",
        "--seed",
        "5",
    ]
    first = invoke(*args, "--out", tmp_path / "a.png")
    assert first.exit_code == 0, first.output
    assert invoke(*args, "--out", tmp_path / "b.png").exit_code == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    side = 128  # 32-pixel images shown 4× larger, every pixel visible
    assert (
        a.height > 2 * side and a.width > 2 * side
    )  # two prompts across (after the row labels), dense above pruned, captions below
    assert a.tobytes() == b.tobytes()  # seeded: identical reruns
    left = a.width - 2 * side
    top, bottom = a.crop((left, 0, a.width, side)).tobytes(), a.crop((left, side, a.width, 2 * side)).tobytes()
    assert top != bottom  # the pruned model really differs from the dense one


def test_convert_legacy_command(tmp_path):
    model = oh.tiny.tiny_sd3_transformer()
    torch.save(model, tmp_path / "legacy.pth")
    result = invoke("convert-legacy", tmp_path / "legacy.pth", "--out", tmp_path / "converted")
    assert result.exit_code == 0, result.output
    loaded = SD3Transformer2DModel.from_pretrained(tmp_path / "converted")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_generate_from_a_builtin_model(tmp_path):
    from PIL import Image

    result = invoke(
        "generate",
        "builtin:tiny-sd3",
        "--prompt",
        "a red circle",
        "--num-inference-steps",
        "2",
        "--resolution",
        "32",
        "--out",
        tmp_path / "g.png",
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "g.png").size == (32, 32)
    bad = invoke("generate", "builtin:tiny-nope", "--prompt", "x", "--out", tmp_path / "b.png")
    assert bad.exit_code == 2 and "unknown built-in model 'builtin:tiny-nope'" in bad.output


def test_recipes_list_keeps_names_whole_at_any_width_and_json_matches_show():
    narrow = invoke("recipes", "list", COLUMNS="40")
    assert narrow.exit_code == 0
    for name in recipe_names():
        assert name in narrow.output, name
    assert "stabilityai/stable-diffusion-xl-base-1.0" in narrow.output
    listed = json.loads(invoke("recipes", "list", "--json").output)
    assert [r["name"] for r in listed] == recipe_names()
    for entry in listed:
        assert entry == json.loads(invoke("recipes", "show", entry["name"], "--json").output)


def test_every_prune_config_field_round_trips_through_a_recipe_file(tmp_path):
    changed = dict(
        method={"name": "l1"},
        granularity="structured",
        sparsity=0.35,
        block_sparsity={3: 0.1},
        blocks="1:3",
        packages=3,
        weighting="linear_increase",
        alpha_min=0.5,
        alpha_max=1.5,
        damping_fraction=0.05,
        hessian_precision="tf32",
        hessian_device="cpu",
        offload="blocks-to-disk",
    )
    refined = dict(  # obs-diff only, with every setting of its own
        method={"name": "obs-diff", "blocksize": 64, "head_saliency": "exact", "rrf_k": 30, "neuron_batch": 8},
        granularity="structured",
        calibration_target="dense",
        allocation="error",
        allocation_spread=0.2,
    )
    solved = dict(  # obs-diff, not structured
        solver={"name": "admm", "iterations": 30, "rho": 0.2, "refit_iterations": 50, "refit_tolerance": 1e-5}
    )
    defaults = PruneConfig().model_dump()
    groups = (changed, refined, solved)
    every_field = set().union(*groups) | {"n", "m", "memory_budget_gb"}  # n:m and auto-only ones below
    assert every_field == set(defaults)
    assert all(group[k] != defaults[k] for group in groups for k in group)
    base = load_recipe("tiny-sd3-unstructured-50")
    path = tmp_path / "r.yaml"
    for fields in groups:
        path.write_text(base.with_changes({f"prune.{k}": v for k, v in fields.items()}).to_yaml())
        assert load_recipe(path).prune == PruneConfig(**{**base.prune.model_dump(), **fields})
    nm = base.with_changes(
        {
            "prune.granularity": "n:m",
            "prune.n": 4,
            "prune.m": 8,
            "prune.packages": "auto",
            "prune.memory_budget_gb": 2.5,
        }
    )
    path.write_text(nm.to_yaml())
    assert load_recipe(path).prune == PruneConfig(granularity="n:m", n=4, m=8, memory_budget_gb=2.5)
    bad = invoke(
        "prune", "--recipe", "tiny-sd3-unstructured-50", "--set", "prune.percdamp=-1", "--out", tmp_path / "o"
    )
    assert bad.exit_code == 2 and "prune.damping_fraction: Input should be greater than or equal to 0" in bad.output
    bad = invoke("prune", "-r", "tiny-sd3-unstructured-50", "--set", "prune.solver.rho=0.2", "--out", tmp_path / "o")
    assert bad.exit_code == 2 and "obs setting rho: Extra inputs are not permitted" in bad.output


def test_effective_recipe_records_overrides_and_reproduces_the_weights(tmp_path):
    prompts = tmp_path / "f.txt"
    prompts.write_text("a red barn in the snow\ntwo dogs on a beach\na bowl of soup\n")
    first = invoke(
        "prune",
        "--recipe",
        "tiny-sd3-unstructured-50",
        "--prompts",
        prompts,
        "--num-prompts",
        2,
        "--packages",
        1,
        "--set",
        "prune.sparsity=0.6",
        "--out",
        tmp_path / "a",
        "--quiet",
    )
    assert first.exit_code == 0, first.output
    effective = load_recipe(tmp_path / "a" / "recipe.yaml")
    assert effective.calibration.prompts.source == "inline"
    assert effective.calibration.prompts.texts == ["a red barn in the snow", "two dogs on a beach"]
    assert (
        effective.calibration.prompts.count == 2 and effective.prune.packages == 1 and effective.prune.sparsity == 0.6
    )
    assert effective.derived_from.sha256 == load_recipe("tiny-sd3-unstructured-50").sha256
    card = (tmp_path / "a" / "README.md").read_text()
    assert "| prompts | 2, listed in recipe.yaml" in card and "| module packages | 1 |" in card
    assert (
        "| layer targets | each layer's own outputs on the pruned network's inputs (OBS-Diff) |" in card
        and "| sparsity allocation | uniform |" in card
    )
    prompts.unlink()  # the checkpoint carries everything it needs
    again = invoke("prune", "--recipe", tmp_path / "a" / "recipe.yaml", "--out", tmp_path / "b", "--quiet")
    assert again.exit_code == 0, again.output
    a, b = denoiser_weights(tmp_path / "a"), denoiser_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_recipe(tmp_path / "b" / "recipe.yaml").sha256 == effective.sha256  # running it again changes nothing


def test_csv_prompts_name_their_column(tmp_path):
    table = tmp_path / "p.csv"
    table.write_text("id,words\n1,a red barn\n2,a blue boat\n")
    missing = invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--prompts", table, "--out", tmp_path / "o")
    assert missing.exit_code == 2 and "--prompt-column" in missing.output and "columns: id, words" in missing.output
    named = invoke(
        "prune",
        "--recipe",
        "tiny-sd3-unstructured-50",
        "--prompts",
        table,
        "--prompt-column",
        "words",
        "--out",
        tmp_path / "o",
    )
    assert named.exit_code == 0, named.output
    prompts = load_recipe(tmp_path / "o" / "recipe.yaml").calibration.prompts
    assert prompts.texts[:2] == ["a red barn", "a blue boat"] and prompts.count > 2
    assert re.search(rf"calibration prompts\s*│\s*{prompts.count} \(2 distinct, cycled\)", named.output), (
        named.output
    )  # the summary says so


@pytest.fixture(scope="module")
def truncated_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("trunc") / "ckpt"
    oh.save_pruned(oh.tiny.tiny_sd3_transformer(), out)
    weights = out / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return out


@pytest.fixture(scope="module")
def truncated_pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("trunc") / "pipe"
    oh.tiny.tiny_sd3_pipeline().save_pretrained(out)
    weights = out / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return out


def test_files_a_load_does_not_read_never_stop_it(tmp_path):
    """An unused variant left as a git-lfs pointer and a stray folder of weights beside the components."""
    from obsdiff_hub.zoo.sampling import load_pipeline

    pipe = oh.tiny.tiny_sd3_pipeline()
    pipe.save_pretrained(tmp_path / "p", variant="fp16")
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123456\n"
    (tmp_path / "p" / "transformer" / "diffusion_pytorch_model.safetensors").write_text(pointer)
    (tmp_path / "p" / "old_checkpoints").mkdir()
    (tmp_path / "p" / "old_checkpoints" / "step100.safetensors").write_text(pointer)
    loaded = load_pipeline(str(tmp_path / "p"), variant="fp16")
    dense, reloaded = pipe.transformer.state_dict(), loaded.transformer.state_dict()
    assert dense.keys() == reloaded.keys() and all(torch.equal(dense[k], reloaded[k]) for k in dense)  # bit for bit


@pytest.mark.parametrize("name", ["tiny-flux-2of4", "tiny-sdxl-structured-30", "tiny-sd3-unstructured-50"])
def test_plan_runs_for_every_builtin_family(name):
    result = invoke("plan", "--recipe", name, "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["flops_before"] > 0 and (plan["zeroed_weights"] > 0 or plan["params_after"] < plan["params_before"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["plan", "--recipe", "sdxl-30", "--resolution", "0"], "--resolution must be positive"),
        (
            ["plan", "--recipe", "sdxl-30", "--resolution", "100"],
            "--resolution must be a positive multiple of 64 for this model",
        ),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--device", "banana", "--out", "{tmp}/o"],
            "unknown device 'banana'",
        ),
        (["prune", "--recipe", "tiny-sd3-unstructured-50", "--device", "cuda:3", "--out", "{tmp}/o"], "cuda:3"),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--dtype", "float64", "--out", "{tmp}/o"],
            "--dtype must be",
        ),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--num-prompts", "0", "--out", "{tmp}/o"],
            "calibration.prompts.count",
        ),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--set", "nonsense", "--out", "{tmp}/o"],
            "SECTION.FIELD=VALUE",
        ),
        (
            [
                "prune",
                "--recipe",
                "tiny-sd3-unstructured-50",
                "--set",
                "calibration.resolution=38",
                "--out",
                "{tmp}/o",
            ],
            "not a multiple of 4",
        ),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--resume", "--restart", "--out", "{tmp}/o"],
            "exclude each other",
        ),
        (["inspect", "{trunc}"], "truncated or corrupted"),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--base", "{trunc_pipe}", "--out", "{tmp}/o"],
            "transformer/diffusion_pytorch_model.safetensors: truncated or corrupted",
        ),
        (
            ["generate", "{trunc_pipe}", "--prompt", "x", "--out", "{tmp}/g.png"],
            "transformer/diffusion_pytorch_model.safetensors: truncated or corrupted",
        ),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--set", "prune.sparsty=0.4", "--out", "{tmp}/o"],
            "prune.sparsty: Extra inputs are not permitted; did you mean prune.sparsity?",
        ),
        (
            ["prune", "--recipe", "tiny-sd3-unstructured-50", "--packages", "0", "--out", "{tmp}/o"],
            "--packages must be a positive count or auto",
        ),
        (["inspect", "./no/such/folder"], "local folder ./no/such/folder does not exist"),
        (["inspect", "not a repo!!"], "neither a local folder nor a valid Hub repo id"),
        (["convert-legacy", "{tmp}/missing.pth", "--out", "{tmp}/c"], "is not a file"),
        (
            ["generate", "builtin:tiny-sd3", "--prompt", "x", "--num-inference-steps", "0", "--out", "{tmp}/g.png"],
            "--num-inference-steps must be positive",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, truncated_checkpoint, truncated_pipeline):
    filled = [a.format(tmp=tmp_path, trunc=truncated_checkpoint, trunc_pipe=truncated_pipeline) for a in args]
    result = invoke(*filled)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "o").exists()


def test_usage_errors_are_one_line_through_the_entry_point(tmp_path):
    exe = Path(sys.executable).parent / "obsdiff-hub"
    done = subprocess.run(
        [exe, "prune", "--recipe", "tiny-sd3-unstructured-50", "--no-such-option"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "--no-such-option" in done.stderr


def test_an_interrupted_run_leaves_no_output_folder(tmp_path, monkeypatch):
    from obsdiff_hub.zoo import cards

    monkeypatch.setattr(
        cards, "render_card", interrupted_after_pruning(cards.render_card)
    )  # after the weights are written
    result = invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 130
    assert (
        not (tmp_path / "o").exists() and [p.name for p in tmp_path.iterdir() if not p.name.endswith(".partial")] == []
    )
    assert "progress of 2 finished package(s) is saved" in result.output


def test_an_interrupt_before_any_package_says_nothing_was_saved(tmp_path, monkeypatch):
    from obsdiff_hub.pruning.calibration import PipelineCalibration

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PipelineCalibration, "__call__", interrupted)
    result = invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 130 and "no package had finished, nothing was saved" in result.output
    assert list(tmp_path.iterdir()) == []
