"""One error family: a user's mistake is exit 2 with one line, a bug is exit 1 with one line that
says so, --debug shows the traceback, and library messages name parameters, never CLI flags."""

import ast
import importlib
import inspect
import json
import pkgutil
import re
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

import obsdiff_hub
import obsdiff_hub as oh
import obsdiff_hub.tiny  # noqa: F401 - oh.tiny
import obsdiff_hub.zoo.recipes  # noqa: F401 - oh.zoo.recipes
from obsdiff_hub.cli import app
from obsdiff_hub.cli.errors import flags_of, with_flags
from obsdiff_hub.cli.prune import prune
from obsdiff_hub.errors import ObsDiffError
from obsdiff_hub.pruning import solving

ROOT = Path(__file__).resolve().parent.parent
BOOM = "injected failure in the solver"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_bad_recipe_field_is_a_user_error(tmp_path):
    result = invoke(
        "prune", "--recipe", "tiny-sd3-unstructured-50", "--set", "prune.sparsity=2", "--out", tmp_path / "o"
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()] and result.output.startswith(
        "error: override: prune.sparsity: Input should be less than 1"
    )


def test_a_bug_is_exit_1_and_says_how_to_report_it(tmp_path, monkeypatch):
    def broken(self, unit, hessians, cross_terms=None):
        raise RuntimeError(BOOM)

    monkeypatch.setattr(solving.UnitPruner, "solve", broken)
    result = invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"internal error: RuntimeError: {BOOM}. This is a bug in obsdiff-hub; please report it with the traceback "
        "that --debug prints"
    )
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback_of_a_bug(tmp_path, monkeypatch):
    def broken(self, unit, hessians, cross_terms=None):
        raise RuntimeError(BOOM)

    monkeypatch.setattr(solving.UnitPruner, "solve", broken)
    debug = invoke("--debug", "prune", "--recipe", "tiny-sd3-unstructured-50", "--out", tmp_path / "o", "--quiet")
    assert debug.exit_code == 1 and debug.output == ""  # the exception itself reaches the interpreter, which prints it
    printed = "".join(traceback.format_exception(debug.exception))
    assert printed.startswith("Traceback (most recent call last)") and f"RuntimeError: {BOOM}" in printed
    assert "in broken" in printed  # the frame that raised


def test_parameters_named_by_the_library_become_this_commands_flags():
    flags = flags_of(prune)
    assert flags["overwrite"] == "--overwrite" and flags["set_"] == "--set" and flags["recipe"] == "--recipe"
    message = (
        "output directory o already exists; pass `overwrite` to replace it or choose another `out`; see "
        "`prune.sparsity`"
    )
    assert (
        with_flags(message, flags)
        == "output directory o already exists; pass --overwrite to replace it or choose another --out; see "
        "`prune.sparsity`"
    )


def test_every_error_class_of_the_package_is_an_obsdiff_error():
    found = []
    for info in pkgutil.walk_packages(obsdiff_hub.__path__, "obsdiff_hub."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            # private exceptions are control flow that never leaves its module (asymmetric's _Reached)
            if issubclass(cls, BaseException) and cls.__module__ == info.name and not cls.__name__.startswith("_"):
                found.append(cls)
                assert issubclass(cls, ObsDiffError), f"{info.name}.{cls.__name__} is not an ObsDiffError"
    assert len(found) >= 10


def _raised_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal inside a ``raise`` statement of a file (f-string parts included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            out += [
                (s.lineno, s.value)
                for s in ast.walk(node.exc)
                if isinstance(s, ast.Constant) and isinstance(s.value, str)
            ]
    return out


def test_library_messages_never_name_a_command_line_flag():
    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
    library = [p for p in (ROOT / "obsdiff_hub").rglob("*.py") if "cli" not in p.relative_to(ROOT).parts]
    offenders = [
        f"{p.relative_to(ROOT)}:{line}: {text}"
        for p in library
        for line, text in _raised_strings(p)
        if flag.search(text)
    ]
    assert offenders == []


def test_bench_defaults_to_the_pipelines_own_resolution(tmp_path):
    out = tmp_path / "shapes"
    assert (
        invoke(
            "prune",
            "--recipe",
            "tiny-shapes-structured-30",
            "--out",
            out,
            "--quiet",
            "--set",
            "evaluation=null",
            "--set",
            "calibration.prompts.count=8",
            "--set",
            "calibration.steps=4",
        ).exit_code
        == 0
    )
    result = invoke("bench", out)
    assert result.exit_code == 0, result.output
    record = __import__("json").loads((out / "bench.json").read_text())
    assert (
        record["resolution"] == 32 and record["latent_size"] == 16
    )  # the shapes model's 16 latents × its VAE's 2 pixels each


@pytest.mark.parametrize("error", [MemoryError("cannot allocate 48 GB")])
def test_running_out_of_memory_is_one_line_exit_2(error):
    from obsdiff_hub.cli.errors import explain

    assert explain(error, {}) == ("error: out of memory (cannot allocate 48 GB)", 2)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            [
                "prune",
                "-r",
                "tiny-sdxl-structured-30",
                "--set",
                "calibration.prompts.source=hub-dataset",
                "--set",
                "calibration.prompts.path=p.txt",
                "--set",
                "calibration.prompts.repo_id=bad repo!!",
                "--out",
                "{tmp}/o",
            ],
            "invalid repo id 'bad repo!!'",
        ),
        (["prune", "-r", "tiny-sdxl-structured-30", "--out", "/proc/obsdiff-out"], "nothing can be written in /proc"),
        (
            ["generate", "builtin:tiny-sdxl", "--prompt", "x", "--resolution", "33", "--out", "{tmp}/g.png"],
            "--resolution must be a positive multiple of",
        ),
        (
            ["generate", "builtin:tiny-sdxl", "--prompt", "x", "--device", "mps", "--out", "{tmp}/g.png"],
            "unsupported device mps",
        ),
        (["bench", "{noweights}", "--base", "builtin:tiny-sdxl", "--out", "{tmp}/b"], "does not load as OBSDiffUNet"),
        (["card", "{corrupt}"], "report.json: not readable JSON"),
    ],
)
def test_mistakes_found_by_review_are_user_errors(args, message, tmp_path):
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text(
        json.dumps({**dict(oh.tiny.tiny_sdxl_unet().config), "_class_name": "UNet2DConditionModel"})
    )
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "recipe.yaml").write_text(oh.zoo.recipes.load_recipe("tiny-sdxl-structured-30").to_yaml())
    (corrupt / "report.json").write_text("{not json")
    filled = [a.format(tmp=tmp_path, noweights=noweights, corrupt=corrupt) for a in args]
    result = invoke(*filled)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()
