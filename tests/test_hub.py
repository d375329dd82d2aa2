import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard, snapshot_download
from typer.testing import CliRunner

import obsdiff_hub as oh
from obsdiff_hub.cli import app
from obsdiff_hub.hub import pull
from obsdiff_hub.storage.manifest import ManifestError
from obsdiff_hub.zoo.cards import validate_card

runner = CliRunner()
RECIPE = "tiny-sdxl-structured-30"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "ckpt"
    result = invoke("prune", "--recipe", RECIPE, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def pushed(hub, checkpoint):
    result = invoke(
        "push", checkpoint, "--repo-id", "zoo/tiny-sdxl", "--token", hub.token, "--endpoint", hub.write_endpoint
    )
    assert result.exit_code == 0, result.output
    assert hub.token not in result.output
    return "zoo/tiny-sdxl"


def latents(pipe):
    return pipe(
        "a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_pull_from_pretrained_equals_local(hub, checkpoint, pushed):
    local = DiffusionPipeline.from_pretrained(checkpoint)
    path = pull(pushed, revision="main").path
    for name in ("model_index.json", "recipe.yaml", "report.json", "README.md", "obsdiff-manifest.json"):
        assert (path / name).is_file(), name
    assert not (path / ".obsdiff-hub.json").exists()  # the local ownership marker is not published
    remote = DiffusionPipeline.from_pretrained(pushed)  # through olah, default HF_ENDPOINT
    assert type(remote.unet) is oh.OBSDiffUNet
    assert all(torch.equal(a, b) for a, b in zip(remote.unet.state_dict().values(), local.unet.state_dict().values()))
    torch.testing.assert_close(latents(remote), latents(local), rtol=1e-5, atol=1e-5)
    unet = oh.OBSDiffUNet.from_pretrained(pushed, subfolder="unet", verify=True)
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in remote.unet.parameters())
    manifest = json.loads((path / "obsdiff-manifest.json").read_text())
    assert any(name.startswith("unet/") for name in manifest["files"])


def test_tag_branch_and_sha_resolve(hub, checkpoint, pushed, tmp_path):
    result = invoke(
        "push",
        checkpoint,
        "--repo-id",
        pushed,
        "--branch",
        "dev",
        "--tag",
        "dev-build-1",
        "--token",
        hub.token,
        "--endpoint",
        hub.write_endpoint,
    )
    assert result.exit_code == 0, result.output
    repo = hub.double.repo(pushed)
    main_sha, dev_sha = repo.resolve("refs/heads/main"), repo.resolve("refs/heads/dev")
    assert repo.resolve(f"refs/tags/{RECIPE}-v1") == main_sha
    assert repo.resolve("refs/tags/dev-build-1") == dev_sha != main_sha
    for revision, sha in (
        (f"{RECIPE}-v1", main_sha),
        ("dev", dev_sha),
        ("dev-build-1", dev_sha),
        (main_sha, main_sha),
    ):
        path = pull(pushed, revision=revision, local_dir=tmp_path / revision).path
        assert (path / "unet" / "config.json").is_file()
        snapshot = Path(snapshot_download(pushed, revision=revision))
        assert snapshot.name == sha


def test_card_round_trips_through_model_card_load(pushed):
    card = ModelCard.load(pushed)
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "text-to-image"
    assert {"obs-diff", "pruned", "structured", "unet"} <= set(card.data.tags)
    assert f'DiffusionPipeline.from_pretrained("{pushed}"' in card.text
    assert oh.zoo.recipes.load_recipe(RECIPE).sha256 in card.text
    validate_card(card.content)


def test_tampered_weight_fails_verification(hub, checkpoint, pushed, tmp_path):
    repo = hub.double.repo(pushed)
    name = "unet/diffusion_pytorch_model.safetensors"
    original = (checkpoint / name).read_bytes()
    tampered = original[:-64] + bytes(64)
    repo.git("update-ref", "refs/heads/tampered", repo.resolve("refs/heads/main"))
    repo.commit("tampered", {name: tampered}, "silently change weights")
    with pytest.raises(ManifestError, match=rf"{name}: sha256 does not match"):
        pull(pushed, revision="tampered", local_dir=tmp_path / "t")
    assert not (tmp_path / "t" / name).exists()
    with pytest.raises(ManifestError):
        oh.OBSDiffUNet.from_pretrained(pushed, subfolder="unet", revision="tampered", verify=True)
    result = invoke("pull", pushed, "--revision", "tampered", "--local-dir", tmp_path / "cli")
    assert result.exit_code == 2 and "sha256 does not match" in result.output


def test_no_token_anywhere(hub, checkpoint, pushed):
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    files += [p for p in hub.root.rglob("*") if p.is_file() and ".git/objects" not in str(p)]
    for path in files:
        assert hub.token.encode() not in path.read_bytes(), path
    all_blobs = subprocess.run(
        [
            "git",
            "grep",
            "-I",
            "-l",
            hub.token,
            *subprocess.run(
                ["git", "rev-list", "--all"], cwd=hub.double.repo(pushed).path, capture_output=True, text=True
            ).stdout.split(),
        ],
        cwd=hub.double.repo(pushed).path,
        capture_output=True,
        text=True,
    )
    assert all_blobs.stdout == ""


def test_wrong_token_is_rejected_and_not_echoed(hub, checkpoint):
    result = invoke(
        "push",
        checkpoint,
        "--repo-id",
        "zoo/other",
        "--token",
        "hf_wrong_secret_123",
        "--endpoint",
        hub.write_endpoint,
    )
    assert result.exit_code == 2
    assert "401" in result.output or "Invalid credentials" in result.output
    assert "hf_wrong_secret_123" not in result.output
    assert not hub.double.repo("zoo/other").path.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["push", "{ckpt}", "--repo-id", "not a repo!!"], "invalid repo id"),
        (["push", "{missing}", "--repo-id", "zoo/x"], "does not exist"),
        (["push", "{plain}", "--repo-id", "zoo/x"], "is not a pruned checkpoint"),
        (["pull", "bad//id"], "invalid repo id"),
    ],
)
def test_push_pull_input_errors(hub, checkpoint, tmp_path, args, message):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    filled = [a.format(ckpt=checkpoint, missing=tmp_path / "missing", plain=tmp_path / "plain") for a in args]
    result = invoke(*filled, "--endpoint", hub.write_endpoint)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_push_changes_nothing_local(hub, checkpoint):
    before = snapshot(checkpoint)
    result = invoke(
        "push", checkpoint, "--repo-id", "zoo/untouched", "--token", hub.token, "--endpoint", hub.write_endpoint
    )
    assert result.exit_code == 0, result.output
    assert snapshot(checkpoint) == before  # card and manifest went into the commit, not the folder


def test_push_to_a_dead_endpoint_is_one_line_and_leaves_the_folder_as_it_was(checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    before = snapshot(checkpoint)
    exe = Path(sys.executable).parent / "obsdiff-hub"
    done = subprocess.run(
        [
            exe,
            "push",
            checkpoint,
            "--repo-id",
            "zoo/x",
            "--token",
            "hf_dead_endpoint_secret",
            "--endpoint",
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the Hub at http://127.0.0.1:{port}"), (
        done.stderr
    )
    assert "hf_dead_endpoint_secret" not in done.stderr + done.stdout
    assert snapshot(checkpoint) == before


def test_re_pushing_an_existing_tag_fails_before_any_commit(hub, checkpoint, pushed):
    repo = hub.double.repo(pushed)
    history = repo.git("rev-list", "--all")
    result = invoke("push", checkpoint, "--repo-id", pushed, "--token", hub.token, "--endpoint", hub.write_endpoint)
    assert result.exit_code == 2
    assert f"tag {RECIPE}-v1 already exists" in result.output and "--tag" in result.output
    assert repo.git("rev-list", "--all") == history
    retagged = invoke(
        "push",
        checkpoint,
        "--repo-id",
        pushed,
        "--tag",
        "second-build",
        "--token",
        hub.token,
        "--endpoint",
        hub.write_endpoint,
    )
    assert retagged.exit_code == 0, retagged.output
    assert repo.resolve("refs/tags/second-build") == repo.resolve("refs/heads/main") != history.splitlines()[0]


def test_card_command_renders_locally(checkpoint):
    result = invoke("card", checkpoint, "--repo-id", "zoo/preview")
    assert result.exit_code == 0, result.output
    text = (checkpoint / "README.md").read_text()
    meta = validate_card(text)
    assert meta["library_name"] == "diffusers" and "obs-diff" in meta["tags"]
    assert (
        'from_pretrained("builtin:' not in text
    )  # runnable snippets: the pruned UNet goes into the shipped dense pipeline
    assert (
        'OBSDiffUNet.from_pretrained("zoo/preview", subfolder="unet"' in text
        and 'obsdiff_hub.load_pipeline("builtin:tiny-sdxl"' in text
    )


def test_prompts_from_a_hub_dataset_through_olah(hub):
    from hub_double import GitRepo

    from obsdiff_hub.pruning.config import PromptSource
    from obsdiff_hub.pruning.prompts import resolve_prompts

    repo = GitRepo(hub.root / "mirrors" / "datasets" / "zoo" / "captions")
    repo.path.mkdir(parents=True)
    repo.git("init", "-q", "-b", "main")
    repo.commit("main", {"data/prompts.csv": b"id,caption\n1,a red barn in snow\n2,two dogs on a beach\n"}, "captions")
    source = PromptSource(
        source="hub-dataset",
        repo_id="zoo/captions",
        path="data/prompts.csv",
        column="caption",
        count=3,
        revision="main",
    )
    prompts = resolve_prompts(source)
    assert prompts == ["a red barn in snow", "two dogs on a beach", "a red barn in snow"]


@pytest.mark.parametrize(
    "args",
    [
        ["pull", "zoo/no-such-repo"],
        ["inspect", "zoo/no-such-repo"],
        ["generate", "zoo/no-such-repo", "--prompt", "x", "--num-inference-steps", "1", "--out", "{tmp}/g.png"],
        ["prune", "--recipe", "tiny-shapes-unstructured-50", "--base", "zoo/no-such-repo", "--out", "{tmp}/o"],
    ],
)
def test_a_repo_the_hub_does_not_have_is_one_line_naming_it(hub, tmp_path, args):
    result = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: zoo/no-such-repo: no such repo on"), result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "g.png").exists()


def test_push_without_any_token_says_so(hub, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no login cache either
    result = invoke("push", checkpoint, "--repo-id", "zoo/x", "--endpoint", hub.write_endpoint)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: no Hub token: set HF_TOKEN (or pass a --token), or run `hf auth login`"


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "nomodel"],
        ["prune", "--recipe", "tiny-shapes-unstructured-50", "--base", "me/nomodel", "--out", "{tmp}/o"],
    ],
)
def test_a_name_that_is_neither_a_folder_nor_reachable_says_both(tmp_path, args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    exe = Path(sys.executable).parent / "obsdiff-hub"
    env = {**os.environ, "HF_ENDPOINT": dead, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "2"}
    done = subprocess.run(
        [exe, *[a.format(tmp=tmp_path) for a in args]], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 2 and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no local folder has that name, and cannot reach the Hub at {dead}" in lines[0], (
        done.stderr
    )
    assert not (tmp_path / "o").exists()


def test_local_failures_inside_a_hub_call_are_not_reworded_as_hub_failures():
    from huggingface_hub.errors import LocalEntryNotFoundError

    from obsdiff_hub.errors import HubError
    from obsdiff_hub.hub import HubClient

    with pytest.raises(PermissionError, match="cache is read-only"):
        with HubClient().errors("zoo/x"):
            try:
                raise LocalEntryNotFoundError("offline")
            except LocalEntryNotFoundError:
                raise PermissionError("cache is read-only")  # raised while handling, not caused by it
    with pytest.raises(HubError, match="^zoo/x: cannot reach the Hub at .*, nor find it in the cache"):
        with HubClient().errors("zoo/x"):
            raise OSError("wrapped") from LocalEntryNotFoundError("offline")


def test_a_cached_repo_works_offline_and_pull_always_means_the_hub(hub, pushed, tmp_path, monkeypatch):
    from huggingface_hub import constants

    pull(pushed)  # now in the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = invoke("inspect", pushed, "--json")
    assert offline.exit_code == 0, offline.output  # read from the cache, no listing asked of the Hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / pushed).mkdir(parents=True)  # a local folder named like the repo is not what pull means
    assert pull(pushed).commit == hub.double.repo(pushed).resolve("refs/heads/main")
    single = invoke("pull", "justaname")
    assert single.exit_code == 2 and "use NAMESPACE/NAME" in single.output
