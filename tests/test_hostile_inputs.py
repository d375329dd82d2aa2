"""Hostile inputs, third round: no write through a planted link anywhere, pulls verified against the
commit they downloaded, and every input bounded in memory and time. Each test is a real attack
with a victim that must survive byte for byte, a marker that must not appear, or a measured bound."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.cli import app
from obsdiff_hub.hub import pull
from obsdiff_hub.zoo.recipes import load_recipe

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
SHORT = ["--set", "calibration.prompts.count=4", "--set", "calibration.steps=3"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "ckpt"
    assert (
        invoke(
            "prune", "-r", "tiny-shapes-structured-30", "--out", out, "--quiet", "--set", "evaluation=null", *SHORT
        ).exit_code
        == 0
    )
    return out


def victim(tmp_path: Path, name: str = "victim.txt") -> Path:
    path = tmp_path / name
    path.write_text("precious, must survive\n")
    return path


# ------------------------------------------------------------------- one write primitive


WRITERS = {"write_text", "write_bytes", "save_file", "save", "copy", "copyfile", "copy2", "copytree"}


def _direct_writes(path: Path) -> list[str]:
    """Write calls outside ``with atomic_path(...) as tmp:`` blocks (whose writes target ``tmp``)."""
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
            isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", "") == "atomic_path"
            for i in node.items
        ):
            inside |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in inside:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if (
            name == "open"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and set(str(node.args[1].value)) & set("wax+")
        ):
            found.append(f"{path.name}:{node.lineno} open(..., {node.args[1].value!r})")
        elif name in WRITERS:
            into_memory = name == "save" and node.args and getattr(node.args[0], "id", "") == "buffer"
            if not into_memory:
                found.append(f"{path.name}:{node.lineno} {name}(...)")
    return found


def test_every_file_is_written_through_the_one_write_primitive():
    code = [p for p in (ROOT / "obsdiff_hub").rglob("*.py") if p.name != "outputs.py" or p.parent.name != "storage"]
    assert [w for p in code for w in _direct_writes(p)] == []


def test_a_link_planted_at_generates_output_is_replaced_never_followed(tmp_path):
    target = victim(tmp_path)
    (tmp_path / "samples.png").symlink_to(target)
    result = invoke(
        "generate",
        "builtin:tiny-sd3",
        "--prompt",
        "x",
        "--num-inference-steps",
        "1",
        "--resolution",
        "32",
        "--out",
        tmp_path / "samples.png",
    )
    assert result.exit_code == 0, result.output
    assert target.read_text() == "precious, must survive\n" and not (tmp_path / "samples.png").is_symlink()


def test_links_planted_in_the_evaluation_cache_and_records_are_never_followed(checkpoint, tmp_path, monkeypatch):
    from obsdiff_hub.zoo import records

    cache = tmp_path / "cache"
    monkeypatch.setenv("OBSDIFF_HUB_CACHE", str(cache))
    out = tmp_path / "eval"
    args = [
        "eval",
        checkpoint,
        "--metrics",
        "psnr",
        "--prompts",
        "builtin:shapes",
        "--num-prompts",
        "2",
        "--num-inference-steps",
        "2",
        "--out",
        out,
    ]
    assert invoke(*args).exit_code == 0
    target = victim(tmp_path)
    images = sorted((cache / "images").rglob("*.png"))
    assert len(images) == 4
    for image in images:  # a predictable key: links planted where the next run writes
        image.unlink()
        image.symlink_to(target)
    for name in (records.EVAL_FILE, records.GRID_FILE):
        (out / name).unlink()
        (out / name).symlink_to(target)
    assert invoke(*args, "--overwrite").exit_code == 0
    assert target.read_text() == "precious, must survive\n"
    assert not any(p.is_symlink() for p in [*images, out / records.EVAL_FILE, out / records.GRID_FILE])
    # a link in place of a folder inside the cache is refused, and nothing is written through it
    shutil.rmtree(cache / "images")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cache / "images").symlink_to(elsewhere)
    refused = invoke(*args[:-2], "--out", tmp_path / "eval2")
    assert "is a link or a file where a folder belongs" in one_line_error(refused) and list(elsewhere.iterdir()) == []


def test_a_link_planted_at_bench_json_is_replaced(checkpoint, tmp_path):
    from obsdiff_hub.zoo.records import BENCH_FILE

    out = tmp_path / "b"
    out.mkdir()
    target = victim(tmp_path)
    (out / BENCH_FILE).symlink_to(target)
    assert invoke("bench", checkpoint, "--repeats", "2", "--out", out).exit_code == 0
    assert target.read_text() == "precious, must survive\n" and not (out / BENCH_FILE).is_symlink()


def test_overwrite_never_replaces_a_folder_of_empty_folders(tmp_path):
    out = tmp_path / "o"
    (out / "mine" / "nested").mkdir(parents=True)
    result = invoke("prune", "-r", "tiny-sd3-unstructured-50", "--out", out, "--overwrite", "--quiet")
    assert "holds mine/, which obsdiff-hub did not write" in one_line_error(result)
    assert (out / "mine" / "nested").is_dir()


# --------------------------------------------------------------------------- pulls


@pytest.fixture(scope="module")
def published(hub, checkpoint):
    result = invoke(
        "push", checkpoint, "--repo-id", "zoo/hostile", "--token", hub.token, "--endpoint", hub.write_endpoint
    )
    assert result.exit_code == 0, result.output
    return "zoo/hostile"


def test_pull_into_a_local_dir_never_writes_through_planted_links(hub, published, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    target = victim(tmp_path)
    (local / "model_index.json").symlink_to(target)  # a file link: replaced
    fetched = pull(published, local_dir=local)
    assert target.read_text() == "precious, must survive\n" and not (local / "model_index.json").is_symlink()
    assert fetched.commit == hub.double.repo(published).resolve("refs/heads/main")
    second = tmp_path / "second"
    second.mkdir()
    trap = tmp_path / "trap"
    trap.mkdir()
    (second / "unet").symlink_to(trap)  # a folder link: refused before anything moves
    result = invoke("pull", published, "--local-dir", second)
    assert "is a link or a file where a folder belongs" in one_line_error(result)
    assert list(trap.iterdir()) == [] and sorted(p.name for p in second.iterdir()) == ["unet"]


def test_the_listing_of_the_downloaded_commit_decides_even_when_the_repo_moves(hub, published, tmp_path, monkeypatch):
    """The repo gains a file named like the user's between the download and the listing: the
    listing of the commit that was downloaded decides, so the manifest entry is refused and the
    user's file survives (the old code listed the branch head, passed the entry, and deleted it)."""
    from hub_double import repo_claiming

    from obsdiff_hub import hub as hub_module

    repo = repo_claiming(hub.root, "moving", "notes.safetensors")
    local = tmp_path / "project"
    local.mkdir()
    (local / "notes.safetensors").write_text("my work\n")
    real_download = hub_module.snapshot_download

    def download_then_push(*args, **kwargs):
        path = real_download(*args, **kwargs)
        repo.commit("main", {"notes.safetensors": b"abc"}, "the repo moves on")
        return path

    monkeypatch.setattr(hub_module, "snapshot_download", download_then_push)
    with pytest.raises(oh.CheckpointError, match="which the repository does not hold"):
        pull("evil/moving", local_dir=local)
    assert (local / "notes.safetensors").read_text() == "my work\n"


# ------------------------------------------------------------------------- bounds


def peak_rss_mb(command: list, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` (a :data:`CLI` command); its output and its own peak resident memory, in MiB.

    The command reports its ``VmHWM`` as it exits: the kernel's ``ru_maxrss`` of a child (``os.wait4``,
    ``RUSAGE_CHILDREN``) starts from this test process's own size when it forks, so it measured the test
    worker, not the command (a 9 MB child of a 1.6 GB process reports 1.6 GB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([str(c) for c in command], stdout=out, stderr=err)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    reported = re.findall(r"^VmHWM (\d+)$", stderr, re.MULTILINE)
    assert reported, f"the command did not report its peak memory: {stderr[-2000:]}"
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    return done, int(reported[-1]) / 1024


PEAK_AT_EXIT = (  # the process's own high-water mark, printed to stderr as it exits
    "import atexit, sys; atexit.register(lambda: print('VmHWM', next(l.split()[1] for l in "
    "open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)); "
)
CLI = [sys.executable, "-c", PEAK_AT_EXIT + "from obsdiff_hub.cli import main; main()"]


def test_an_alias_bomb_recipe_is_one_line_in_bounded_memory(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("schema_version: 1\n" + "\n".join(levels) + "\n")  # 10¹⁰ nodes expanded, 1 KB on disk
    done, peak = peak_rss_mb([*CLI, "prune", "-r", bomb, "--out", tmp_path / "o"])
    assert done.returncode == 2 and "aliases expand to more than 100,000 YAML nodes" in done.stderr, done.stderr
    assert peak < 1024


def test_a_60_mb_prompt_line_is_one_line_in_bounded_memory(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a " * 30_000_000 + "\nshort prompt\n")
    done, peak = peak_rss_mb(
        [*CLI, "prune", "-r", "tiny-sd3-unstructured-50", "--prompts", prompts, "--out", tmp_path / "o"]
    )
    assert done.returncode == 2 and "prompt 1 has 59,999,999 characters, more than the 4096" in done.stderr, (
        done.stderr
    )
    assert peak < 1024 and not (tmp_path / "o").exists()


def test_csv_fields_beyond_the_csv_limit_are_one_line(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\n" + "x" * 200_000 + "\n")
    result = invoke("prune", "-r", "tiny-sd3-unstructured-50", "--prompts", prompts, "--out", tmp_path / "o")
    assert "not a readable csv file" in one_line_error(result)


def test_an_oversized_config_is_refused_before_anything_is_built(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / "unet" / "config.json").read_text())
    config["layers_per_block"] = 10_000_000
    (bad / "unet" / "config.json").write_text(json.dumps(config))
    done, peak = peak_rss_mb([*CLI, "inspect", bad / "unet"], timeout=120)  # memory: one command's own process
    assert done.returncode == 2 and "layers_per_block = 10000000 is larger than 2,048" in done.stderr, done.stderr
    assert peak < 1024
    generated = invoke("generate", bad, "--prompt", "x", "--out", tmp_path / "g.png")  # refused the same way
    assert "layers_per_block = 10000000 is larger than 2,048" in one_line_error(generated)


@pytest.mark.parametrize(
    "structure",
    [
        {"down_blocks.0": "many"},
        ["a", "list"],
        {"x" * 600: 3},
        {"down_blocks.0.attentions.0.transformer_blocks.0.attn1": 0},
    ],
)
def test_malformed_pruned_shapes_are_one_line_in_every_command(checkpoint, tmp_path, structure):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / "unet" / "config.json").read_text())
    config["obsdiff_structure"] = structure
    (bad / "unet" / "config.json").write_text(json.dumps(config))
    for command in (
        ["inspect", bad],
        ["generate", bad, "--prompt", "x", "--out", tmp_path / "g.png"],
        [
            "eval",
            bad,
            "--base",
            "builtin:tiny-shapes",
            "--metrics",
            "psnr",
            "--num-prompts",
            "1",
            "--out",
            tmp_path / "e",
        ],
    ):
        message = one_line_error(invoke(*command))
        assert "obsdiff_structure" in message or "pruned size" in message, message


def test_a_model_index_naming_a_function_is_one_line(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["unet"] = ["diffusers", "randn_tensor"]
    (bad / "model_index.json").write_text(json.dumps(index))
    for command in (
        ["generate", bad, "--prompt", "x", "--out", tmp_path / "g.png"],
        [
            "eval",
            bad,
            "--base",
            "builtin:tiny-shapes",
            "--metrics",
            "psnr",
            "--num-prompts",
            "1",
            "--out",
            tmp_path / "e",
        ],
    ):
        result = invoke(*command)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width × height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_an_image_bomb_in_the_reference_folder_is_one_line(checkpoint, tmp_path):
    reference = tmp_path / "coco"
    reference.mkdir()
    (reference / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    result = invoke(
        "eval",
        checkpoint,
        "--metrics",
        "fid",
        "--fid-features",
        "clip",
        "--clip-model",
        tmp_path / "no-clip",
        "--reference",
        reference,
        "--out",
        tmp_path / "e",
    )
    assert result.exit_code == 2  # the CLIP model is checked first; the image on its own:
    from obsdiff_hub.zoo.metrics.fid import reference_images

    with pytest.raises(oh.InputError, match="bomb.png: claims more than the 64 MP an image may have here"):
        reference_images(str(reference))


def test_special_files_and_links_out_of_a_checkpoint_are_never_read(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "hf_secret"}')
    (bad / "unet" / "extra.json").symlink_to(secret)
    result = invoke(
        "eval",
        bad,
        "--base",
        "builtin:tiny-shapes",
        "--metrics",
        "psnr",
        "--num-prompts",
        "1",
        "--out",
        tmp_path / "e",
    )
    assert "links to" in one_line_error(result) and "outside" in result.output
    (bad / "unet" / "extra.json").unlink()
    os.mkfifo(bad / "unet" / "stuck.safetensors")  # reading it would block forever
    done = subprocess.run([*CLI, "inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not a regular file" in done.stderr, done.stderr


def test_plan_never_follows_a_recipe_config_path(tmp_path):
    recipe = json.loads(json.dumps(load_recipe("sdxl-30").model_dump(mode="json")))
    for hostile in ("../../../../../dev/zero", "/etc/passwd"):
        recipe["base_model"]["config"] = hostile
        path = tmp_path / "r.yaml"
        path.write_text(json.dumps(recipe))
        result = invoke("plan", "-r", path)
        assert "base_model.config: String should match pattern" in one_line_error(result)


def test_only_safetensors_are_loaded_and_torch_load_is_never_called(tmp_path, monkeypatch):
    pipe = tiny.save_tiny_pipeline("sd21", tmp_path / "pipe")
    encoder = Path(pipe) / "text_encoder"
    state = {
        k: v
        for k, v in __import__("safetensors.torch", fromlist=["x"]).load_file(encoder / "model.safetensors").items()
    }
    (encoder / "model.safetensors").unlink()
    torch.save(state, encoder / "pytorch_model.bin")  # a pickle, the only weights this component ships

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    result = invoke("generate", pipe, "--prompt", "x", "--num-inference-steps", "1", "--out", tmp_path / "g.png")
    line = one_line_error(result)
    assert "torch.load was called" not in line and "safetensors" in line.lower(), line
