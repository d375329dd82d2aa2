"""The command line as one tool: one way to name the checkpoint, defaults from the model and its
recipe, checks before the work, summaries that say what happened, help that reads like a CLI."""

import json
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import obsdiff_hub as oh
from obsdiff_hub.cli import app

runner = CliRunner()
SHORT = ["--set", "calibration.prompts.count=8", "--set", "calibration.steps=4"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def shapes_out(tmp_path_factory):
    """The quick start's output (with its recipe's evaluation), on a short calibration."""
    out = tmp_path_factory.mktemp("quick") / "tiny-out"
    result = invoke(
        "prune", "-r", "tiny-shapes-unstructured-50", "--out", out, "--quiet", *SHORT, "--set", "evaluation.num=8"
    )
    assert result.exit_code == 0, result.output
    return out


def test_every_command_takes_the_checkpoint_first_and_the_old_spelling_with_a_note(shapes_out):
    new = invoke("inspect", shapes_out, "--json")
    old = invoke("inspect", "--model", shapes_out, "--json")
    assert new.exit_code == old.exit_code == 0
    assert (
        old.output.splitlines()[0]
        == f"note: the checkpoint is now the first argument: obsdiff-hub inspect {shapes_out}"
    )
    assert json.loads("\n".join(old.output.splitlines()[1:])) == json.loads(new.output)
    both = invoke("bench", shapes_out, "--model", shapes_out)
    assert both.exit_code == 2 and "give the checkpoint once" in both.output
    for command in ("eval", "bench", "generate", "inspect", "card", "push"):
        usage = invoke(command, "--help").output
        assert re.search(rf"Usage: .*{command} \[OPTIONS\] \[MODEL\]", usage), usage


def test_help_reads_like_a_cli_with_an_example_everywhere():
    main = invoke("-h")
    assert main.exit_code == 0 and "Usage: obsdiff-hub" in main.output
    commands = [
        "prune",
        "eval",
        "bench",
        "plan",
        "inspect",
        "generate",
        "convert-legacy",
        "push",
        "pull",
        "card",
        "recipes list",
        "recipes show",
    ]
    for command in commands:
        text = invoke(*command.split(), "-h").output
        assert "Example: obsdiff-hub " + command.split()[0] in text, command
        assert not re.search(r"<(bool|str|int|float|path|list\[[a-z]+\])>", text), text  # no Python-type placeholders


def test_global_flags_work_after_the_command(shapes_out):
    assert invoke("inspect", shapes_out, "--debug", "--json").exit_code == 0
    assert invoke("--verbose", "inspect", shapes_out, "--json").exit_code == 0


def test_eval_uses_the_recipes_settings_refuses_to_overwrite_and_records_every_setting(shapes_out):
    recipe = oh.zoo.recipes.load_recipe(shapes_out / "recipe.yaml")
    before = (shapes_out / "eval.json").read_bytes()
    refused = invoke("eval", shapes_out)
    assert refused.exit_code == 2 and "holds an earlier evaluation; pass --overwrite to replace it" in refused.output
    assert (shapes_out / "eval.json").read_bytes() == before
    done = invoke("eval", shapes_out, "--overwrite", "--quiet")
    assert done.exit_code == 0, done.output
    record = json.loads((shapes_out / "eval.json").read_text())
    spec = recipe.evaluation
    settings = record["settings"]
    assert [settings[k] for k in ("metrics", "prompts", "num", "steps", "guidance_scale", "resolution")] == [
        spec.metrics,
        spec.prompts,
        spec.num,
        spec.steps,
        spec.guidance_scale,
        spec.resolution,
    ]
    assert record["base_revision"] and all(v is not None for v in settings.values())
    assert (
        record["metrics"] == json.loads(before)["metrics"]
    )  # the numbers prune published: same settings, same images


def test_eval_offline_defaults_to_metrics_that_need_no_download(shapes_out, tmp_path, monkeypatch):
    from obsdiff_hub.zoo import evaluation

    monkeypatch.setattr(evaluation.hub_constants, "HF_HUB_OFFLINE", True)
    spec = evaluation.evaluation_settings(str(tmp_path), {})  # a folder with no recipe
    assert spec.metrics == ["psnr"]
    monkeypatch.setattr(evaluation.hub_constants, "HF_HUB_OFFLINE", False)
    assert evaluation.evaluation_settings(str(tmp_path), {}).metrics == ["psnr", "clip"]
    unknown = invoke("eval", shapes_out, "--metrics", "psnr,foo", "--out", tmp_path / "e")
    assert (
        unknown.exit_code == 2
        and "unknown metric 'foo' in --metrics; available: psnr, shapes, clip, fid, imagereward" in unknown.output
    )


@pytest.mark.parametrize("name", ["bad.txt", "nodir/x.png"])
def test_generate_checks_its_output_before_sampling(name, tmp_path, monkeypatch):
    from obsdiff_hub.zoo import sampling

    def never(*args, **kwargs):
        raise AssertionError("sampled before checking the output")

    monkeypatch.setattr(sampling, "generate_images", never)
    result = invoke("generate", "builtin:tiny-sd3", "--prompt", "x", "--out", tmp_path / name)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert ".png, .jpg or .webp" in result.output or "is not an existing folder" in result.output


def test_prune_summary_tells_non_zero_parameters_as_plan_counts_them(tmp_path):
    result = invoke("prune", "-r", "tiny-sd3-unstructured-50", "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    plan = json.loads(invoke("plan", "-r", "tiny-sd3-unstructured-50", "--json").output)
    assert summary["nonzero_params_after"] == plan["params_after"] - plan["zeroed_weights"] < summary["params_after"]
    saved = oh.zoo.recipes.load_recipe("tiny-sd3-unstructured-50").output.dtype
    assert (
        summary["dtypes"]["saved"] == saved == "float32"
        and summary["heads_removed"] == summary["neurons_removed"] == 0
    )
    shown = invoke("prune", "-r", "tiny-sdxl-structured-30", "--out", tmp_path / "s")
    assert (
        shown.exit_code == 0 and re.search(r"heads removed\W+[1-9]", shown.output) and "saved float32" in shown.output
    )


def test_builtin_prompt_sets_are_accepted_wherever_prompts_are(tmp_path):
    result = invoke(
        "prune",
        "-r",
        "tiny-sd3-unstructured-50",
        "--prompts",
        "builtin:shapes",
        "--num-prompts",
        "4",
        "--out",
        tmp_path / "o",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    pinned = oh.zoo.recipes.load_recipe(tmp_path / "o" / "recipe.yaml").calibration.prompts
    assert (pinned.source, pinned.path, pinned.count) == ("builtin", "shapes", 4)


def test_card_never_replaces_a_readme_it_did_not_write(shapes_out, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(shapes_out, folder)
    (folder / "README.md").write_text("my notes\n")
    refused = invoke("card", folder)
    assert refused.exit_code == 2 and "was not written by obsdiff-hub; pass --overwrite" in refused.output
    assert (folder / "README.md").read_text() == "my notes\n"
    assert invoke("card", folder, "--overwrite").exit_code == 0 and "OBS-Diff" in (folder / "README.md").read_text()


def test_startup_does_not_load_the_libraries():
    probe = (
        "import sys; sys.argv = ['obsdiff-hub', '--help']\nfrom obsdiff_hub.cli import app\ntry:\n    "
        "app()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stderr.strip().splitlines()[-1] == "[]"
    assert isinstance(app, typer.Typer)
