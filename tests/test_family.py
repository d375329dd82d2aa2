"""Family runs: several sparsities of one model from one calibration of the first package, each
member bit for bit its own single run."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from obsdiff_hub.cli import app
from obsdiff_hub.errors import InputError
from obsdiff_hub.zoo.recipes import load_recipe
from obsdiff_hub.zoo.runs import run_family, run_recipe

runner = CliRunner()


def member_recipes(folder: Path, packages: int, sparsities=(0.3, 0.5, 0.7)) -> list[Path]:
    base = load_recipe("tiny-sd3-unstructured-50")
    paths = []
    for ratio in sparsities:
        recipe = base.with_changes(
            {"name": f"tiny-sd3-{round(ratio * 100)}", "prune.sparsity": ratio, "prune.packages": packages}
        )
        path = folder / f"m{round(ratio * 100)}.yaml"
        path.write_text(recipe.to_yaml())
        paths.append(path)
    return paths


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")


def counting():
    """A progress callback counting trajectory batches per package."""
    counts: dict[int, int] = {}

    def progress(event):
        if event.stage == "trajectories":
            counts[event.package] = counts.get(event.package, 0) + 1

    return counts, progress


@pytest.mark.parametrize("packages", [1, 2])
def test_family_members_equal_their_single_runs_and_package_one_calibrates_once(tmp_path, packages):
    paths = member_recipes(tmp_path, packages, (0.3, 0.7))
    recipes = [load_recipe(p) for p in paths]
    family_counts, progress = counting()
    written = run_family(recipes, tmp_path / "zoo", progress=progress)
    assert written == [tmp_path / "zoo" / r.name for r in recipes]
    single_counts = {}
    for recipe in recipes:
        counts, single_progress = counting()
        alone = run_recipe(recipe, tmp_path / "alone" / recipe.name, progress=single_progress).directory
        for package, n in counts.items():
            single_counts[package] = single_counts.get(package, 0) + n
        mine, theirs = weights(tmp_path / "zoo" / recipe.name), weights(alone)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), recipe.name
        saved = load_recipe(tmp_path / "zoo" / recipe.name / "recipe.yaml")
        assert saved.name == recipe.name and saved.prune.sparsity == recipe.prune.sparsity
        assert saved.sha256 == load_recipe(alone / "recipe.yaml").sha256  # the member's own effective recipe
    per_run = single_counts[0] // len(recipes)
    assert per_run > 0 and family_counts[0] == per_run  # package 1's trajectories ran once for the family
    if packages == 2:
        assert family_counts[1] == single_counts[1]  # later packages calibrate per member
    report = json.loads((tmp_path / "zoo" / recipes[1].name / "report.json").read_text())
    assert report["stages"]["calibration_shared_s"] > 0 and report["packages"][0]["calibration_s"] == 0.0


def test_a_family_that_cannot_share_is_one_line_before_any_work(tmp_path):
    paths = member_recipes(tmp_path, 1, (0.3, 0.5))
    other = load_recipe(paths[1]).with_changes({"calibration.steps": 3})
    paths[1].write_text(other.to_yaml())
    result = runner.invoke(app, ["prune", "-r", str(paths[0]), "-r", str(paths[1]), "--out", str(tmp_path / "zoo")])
    assert (
        result.exit_code == 2
        and "differ in calibration" in result.output
        and len(result.output.strip().splitlines()) == 1
    )
    assert not (tmp_path / "zoo").exists()
    method = load_recipe(paths[0]).with_changes({"name": "other", "prune.damping_fraction": 0.05})
    (tmp_path / "p.yaml").write_text(method.to_yaml())
    result = runner.invoke(
        app, ["prune", "-r", str(paths[0]), "-r", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "zoo")]
    )
    assert result.exit_code == 2 and "differs from member 1 in prune.damping_fraction" in result.output
    with pytest.raises(InputError, match="given twice"):
        run_family([load_recipe(paths[0])] * 2, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


def test_the_cli_writes_one_folder_per_member_and_summarises_each(tmp_path):
    paths = member_recipes(tmp_path, 1, (0.4, 0.6))
    result = runner.invoke(
        app, ["prune", "-r", str(paths[0]), "-r", str(paths[1]), "--out", str(tmp_path / "zoo"), "--json"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [Path(r["out"]).name for r in records] == ["tiny-sd3-40", "tiny-sd3-60"]
    assert [round(r["mean_sparsity"], 1) for r in records] == [0.4, 0.6]
    assert "calibration_shared_s" in records[1]["stages_s"] and "calibration_shared_s" not in records[0]["stages_s"]


def test_a_hessian_store_gives_the_same_weights_without_trajectories(tmp_path):
    recipe = load_recipe("tiny-sd3-unstructured-50")
    store = tmp_path / "hessians"
    first = run_recipe(recipe, tmp_path / "a", save_hessians=store).directory
    assert sorted(p.name for p in store.iterdir()) == [
        ".obsdiff-hub.json",
        "package-1.safetensors",
        "package-2.safetensors",
    ]
    counts, progress = counting()
    again = run_recipe(recipe, tmp_path / "b", hessians=store, progress=progress).directory
    assert counts == {}  # no trajectory ran
    mine, theirs = weights(again), weights(first)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert json.loads((again / "report.json").read_text())["package_plan"]["hessians_reused"] == [1, 2]
    counts, progress = counting()
    other = run_recipe(recipe.with_changes({"prune.sparsity": 0.6}), tmp_path / "c", hessians=store, progress=progress)
    assert list(counts) == [1]  # package 1 reused; package 2 calibrates on a network pruned at 60%, not 50%
    assert other.result.report.package_plan["hessians_reused"] == [1]
    alone = run_recipe(recipe.with_changes({"prune.sparsity": 0.6}), tmp_path / "d").directory
    mine, theirs = weights(other.directory), weights(alone)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_store_from_another_calibration_or_base_is_refused_before_any_work(tmp_path):
    recipe = load_recipe("tiny-sd3-unstructured-50")
    store = tmp_path / "hessians"
    run_recipe(recipe.with_changes({"prune.packages": 1}), tmp_path / "a", save_hessians=store)
    for change, named in (
        ({"calibration.steps": 3}, "calibration"),
        ({"calibration.prompts.count": 6}, "prompts_sha256"),
        ({"calibration.seed": 1}, "calibration"),
    ):
        result = runner.invoke(
            app,
            [
                "prune",
                "-r",
                "tiny-sd3-unstructured-50",
                "--packages",
                "1",
                "--hessians",
                str(store),
                "--out",
                str(tmp_path / "b"),
                *[a for k, v in change.items() for a in ("--set", f"{k}={v}")],
            ],
        )
        assert result.exit_code == 2 and f"made with {named} = " in result.output, result.output
        assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    victim = tmp_path / "mine"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep")
    result = runner.invoke(
        app, ["prune", "-r", "tiny-sd3-unstructured-50", "--save-hessians", str(victim), "--out", str(tmp_path / "c")]
    )
    assert (
        result.exit_code == 2
        and (victim / "notes.txt").read_text() == "keep"
        and sorted(p.name for p in victim.iterdir()) == ["notes.txt"]
    )


def test_a_family_publishes_as_one_repo_a_branch_per_member_and_a_card_from_their_evaluations(hub, tmp_path):
    from huggingface_hub import ModelCard
    from PIL import Image

    import obsdiff_hub as oh
    from obsdiff_hub.hub import pull

    paths = member_recipes(tmp_path, 1, (0.4, 0.6))
    zoo = tmp_path / "zoo"
    assert (
        runner.invoke(app, ["prune", "-r", str(paths[0]), "-r", str(paths[1]), "--out", str(zoo), "--quiet"]).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["eval", str(zoo), "--metrics", "psnr", "--num-prompts", "2", "--json"]
    )  # every member, the base sampled once
    assert result.exit_code == 0, result.output
    assert [r["model"] for r in json.loads(result.output)] == ["this checkpoint"] * 2
    psnr = {
        m: json.loads((zoo / m / "eval.json").read_text())["metrics"][0]["pruned"]
        for m in ("tiny-sd3-40", "tiny-sd3-60")
    }
    result = runner.invoke(
        app,
        [
            "push",
            str(zoo),
            "--repo-id",
            "zoo/tiny-family",
            "--token",
            hub.token,
            "--endpoint",
            hub.write_endpoint,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    pushed = json.loads(result.output)
    assert [m["branch"] for m in pushed["members"]] == ["tiny-sd3-40", "tiny-sd3-60"] and [
        m["tag"] for m in pushed["members"]
    ] == ["tiny-sd3-40-v1", "tiny-sd3-60-v1"]
    repo = hub.double.repo("zoo/tiny-family")
    assert repo.resolve("refs/heads/main") == pushed["card_commit"]
    for member in ("tiny-sd3-40", "tiny-sd3-60"):
        assert repo.resolve(f"refs/tags/{member}-v1") == repo.resolve(f"refs/heads/{member}")
        transformer = oh.OBSDiffSD3Transformer.from_pretrained(
            "zoo/tiny-family", subfolder="transformer", revision=member, verify=True
        )
        local = load_file(zoo / member / "transformer" / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(transformer.state_dict()[k], v) for k, v in local.items())
        assert (
            pull("zoo/tiny-family", revision=f"{member}-v1", local_dir=tmp_path / "pulled" / member).path
            / "recipe.yaml"
        ).is_file()
    card = pull("zoo/tiny-family", revision="main", local_dir=tmp_path / "card").path
    text = (card / "README.md").read_text()
    ModelCard(text)  # valid front matter
    for member, value in psnr.items():
        assert f'revision="{member}"' in text or f"`{member}`" in text
        assert f"{value:.4g}" in text
    assert Image.open(card / "quality.png").size == (640, 400)


def test_evaluating_a_family_samples_the_dense_base_once(tmp_path, monkeypatch):
    from obsdiff_hub.zoo.evaluation import evaluate_checkpoint, evaluation_settings

    monkeypatch.setenv("OBSDIFF_HUB_CACHE", str(tmp_path / "cache"))
    paths = member_recipes(tmp_path, 1, (0.4, 0.6))
    zoo = tmp_path / "zoo"
    run_family([load_recipe(p) for p in paths], zoo)
    sampled: dict[str, int] = {}

    def on_image(which, done, total):
        sampled[which] = sampled.get(which, 0) + 1

    for member in ("tiny-sd3-40", "tiny-sd3-60"):
        spec = evaluation_settings(str(zoo / member), {"metrics": ["psnr"], "num": 2})
        evaluate_checkpoint(str(zoo / member), "builtin:tiny-sd3", spec, zoo / member, on_image=on_image)
    assert sampled == {"dense": 2, "pruned": 4}  # two prompts: the dense base once, each member once


def test_hostile_family_and_store_folders_are_one_line_before_any_work(tmp_path):
    paths = member_recipes(tmp_path, 1, (0.4, 0.6))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    (tmp_path / "link").symlink_to(victim)
    for out, says in ((tmp_path / "link", "is a link or a file"), (victim, "which is not a member of this family")):
        result = runner.invoke(app, ["prune", "-r", str(paths[0]), "-r", str(paths[1]), "--out", str(out)])
        assert result.exit_code == 2 and says in result.output, result.output
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    result = runner.invoke(
        app,
        ["prune", "-r", str(paths[0]), "--out", str(tmp_path / "o"), "--save-hessians", str(tmp_path / "o" / "hs")],
    )
    assert result.exit_code == 2 and "overlap" in result.output and not (tmp_path / "o").exists()
    result = runner.invoke(
        app, ["prune", "-r", str(paths[0]), "--out", str(tmp_path / "o"), "--save-hessians", str(victim)]
    )
    assert (
        result.exit_code == 2
        and "is not a Hessian store obsdiff-hub wrote" in result.output
        and not (tmp_path / "o").exists()
    )


def test_a_forged_store_record_is_one_line(tmp_path):
    import os

    from obsdiff_hub.storage.files import write_safetensors_file
    from obsdiff_hub.storage.outputs import mark_owned

    recipe = load_recipe("tiny-sd3-unstructured-50").with_changes({"prune.packages": 1})
    store = tmp_path / "hs"
    run_recipe(recipe, tmp_path / "a", save_hessians=store)
    package = store / "package-1.safetensors"
    tensors = load_file(package)
    for forged in ("not json", "[1, 2]"):
        os.unlink(package)
        write_safetensors_file(package, tensors, metadata={"identity": forged, "totals": "{}"})
        mark_owned(store, ["package-1.safetensors"], kind="hessians")
        result = runner.invoke(
            app,
            [
                "prune",
                "-r",
                "tiny-sd3-unstructured-50",
                "--packages",
                "1",
                "--hessians",
                str(store),
                "--out",
                str(tmp_path / "b"),
            ],
        )
        assert result.exit_code == 2 and "identity record is damaged" in result.output, result.output


def test_a_family_with_a_damaged_evaluation_or_a_repeated_recipe_pushes_nothing(hub, tmp_path):
    import shutil

    paths = member_recipes(tmp_path, 1, (0.4, 0.6))
    zoo = tmp_path / "zoo"
    run_family([load_recipe(p) for p in paths], zoo)
    (zoo / "tiny-sd3-60" / "eval.json").write_text(
        json.dumps(
            {
                "obsdiff_hub_version": "0",
                "model": "m",
                "base": "b",
                "settings": {},
                "metrics": [{"name": "psnr", "label": "PSNR", "pruned": float("inf"), "ci95": [1.0], "samples": 2}],
            }
        )
    )
    result = runner.invoke(
        app,
        ["push", str(zoo), "--repo-id", "zoo/broken-family", "--token", hub.token, "--endpoint", hub.write_endpoint],
    )
    assert result.exit_code == 2 and "eval.json" in result.output and len(result.output.strip().splitlines()) == 1, (
        result.output
    )
    (zoo / "tiny-sd3-60" / "eval.json").unlink()
    shutil.copytree(zoo / "tiny-sd3-40", zoo / "copy-of-40")
    result = runner.invoke(
        app,
        ["push", str(zoo), "--repo-id", "zoo/broken-family", "--token", hub.token, "--endpoint", hub.write_endpoint],
    )
    assert result.exit_code == 2 and "made by recipe tiny-sd3-40" in result.output
    assert not hub.double.repo("zoo/broken-family").path.exists()  # nothing was pushed, not even a first member
