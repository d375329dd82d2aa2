"""Hostile inputs, fourth round: a folder swapped mid-run never redirects a write, every JSON read is
bounded, numbers and names are checked before work, a family push publishes all or nothing, a forged
Hessian store is refused, adapters are read from safetensors only, and an interrupted run's leftovers
are recognised as this tool's own. Each guarantee is a real attack."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import invoke
from safetensors.torch import load_file, save_file

import obsdiff_hub as oh
from obsdiff_hub.storage.files import write_safetensors_file
from obsdiff_hub.storage.outputs import HeldFolder, OutputError, mark_owned
from obsdiff_hub.zoo import evaluation
from obsdiff_hub.zoo.recipes import load_recipe
from obsdiff_hub.zoo.runs import check_family_root, run_family, run_recipe

NESTED = "[" * 100_000 + "]" * 100_000  # 200 KB: a RecursionError in Python's parser
SHORT = {"calibration.prompts.count": 2, "calibration.steps": 2, "prune.packages": 1}


def one_line_error(result, code: int = 2) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def victim_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "someone-else"
    folder.mkdir()
    (folder / "precious.txt").write_text("must survive\n")
    return folder


def members(ratios=(0.3, 0.5), **changes):
    base = load_recipe("tiny-sd3-unstructured-50")
    return [
        base.with_changes({"name": f"fam-{round(r * 100)}", "prune.sparsity": r, **SHORT, **changes}) for r in ratios
    ]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family") / "zoo"
    run_family(members(), root)
    return root


# ----------------------------------------------------------------- writes relative to a held folder


def test_a_family_root_swapped_for_a_link_between_members_receives_nothing_more(tmp_path):
    root, moved, victim = tmp_path / "zoo", tmp_path / "zoo-moved", victim_folder(tmp_path)

    def swap_after_the_first(output):
        if output.directory.name == "fam-30":
            root.rename(moved)
            root.symlink_to(victim)

    with pytest.raises(OutputError, match="was replaced .* nothing more was written there"):
        run_family(members(), root, on_output=swap_after_the_first)
    assert sorted(os.listdir(victim)) == ["precious.txt"]  # the second member went nowhere
    assert sorted(os.listdir(moved)) == ["fam-30"]  # and left nothing half-written behind


def test_a_member_swapped_for_a_link_while_it_is_evaluated_gets_nothing_written_into_the_other_folder(
    family, tmp_path, monkeypatch
):
    member = tmp_path / "member"
    shutil.copytree(family / "fam-30", member)
    victim = victim_folder(tmp_path)
    sample = evaluation.evaluate

    def sample_then_swap(*args, **kwargs):
        result = sample(*args, **kwargs)
        member.rename(tmp_path / "member-moved")
        member.symlink_to(victim)
        return result

    monkeypatch.setattr(evaluation, "evaluate", sample_then_swap)
    spec = evaluation.evaluation_settings(str(member), {"metrics": ["psnr"], "num": 2, "steps": 2})
    with pytest.raises(OutputError, match="was replaced"):
        evaluation.evaluate_checkpoint(member, "builtin:tiny-sd3", spec, member)
    assert sorted(os.listdir(victim)) == ["precious.txt"]
    assert not (tmp_path / "member-moved" / "eval.json").exists()


def test_a_held_folder_writes_through_its_descriptor_whatever_its_name_leads_to(tmp_path):
    folder, victim = tmp_path / "out", victim_folder(tmp_path)
    with HeldFolder.open(folder, create=True) as held:
        folder.rename(tmp_path / "moved")
        folder.symlink_to(victim)
        held.write("result.json", "{}")  # lands in the folder that was opened
        with pytest.raises(OutputError, match="was replaced"):
            held.verify()
    assert (tmp_path / "moved" / "result.json").read_text() == "{}" and sorted(os.listdir(victim)) == ["precious.txt"]


# ---------------------------------------------------------------------------- bounded JSON


def test_deeply_nested_json_is_one_line_everywhere_it_is_read(family, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(NESTED + "\n")
    result = invoke("prune", "-r", "tiny-sd3-unstructured-50", "--prompts", prompts, "--out", tmp_path / "o")
    assert "nested deeper than 64 levels" in one_line_error(result)

    bad = tmp_path / "bad"
    shutil.copytree(family / "fam-30", bad)
    for name in ("transformer/config.json", "model_index.json"):
        original = (bad / name).read_text()
        (bad / name).write_text(NESTED)
        assert "nested deeper than 64 levels" in one_line_error(invoke("inspect", bad))
        (bad / name).write_text(original)

    (bad / "eval.json").write_text(NESTED)
    with pytest.raises(oh.ObsDiffError, match="nested deeper than 64 levels"):
        oh.zoo.cards.card_for_folder(bad)

    from obsdiff_hub.storage.manifest import MANIFEST, ManifestError, verify_manifest

    (bad / MANIFEST).write_text(NESTED)
    with pytest.raises(ManifestError, match="nested deeper than 64 levels"):
        verify_manifest(bad)

    from obsdiff_hub.storage.outputs import MARKER, read_marker

    (bad / MARKER).write_text(NESTED)
    assert read_marker(bad) is None  # not this tool's folder any more: nothing in it is replaced or removed


def test_a_nested_hessian_store_header_is_one_line(saved_store, tmp_path):
    recipe, genuine = saved_store
    store = tmp_path / "hs"
    shutil.copytree(genuine, store)
    package = store / "package-1.safetensors"
    tensors = load_file(package)
    os.unlink(package)
    write_safetensors_file(package, tensors, metadata={"identity": NESTED, "totals": "{}"})
    mark_owned(store, ["package-1.safetensors"], kind="hessians")
    with pytest.raises(oh.InputError, match="identity record is damaged"):
        run_recipe(recipe, tmp_path / "b", hessians=store)


# ------------------------------------------------------------------------ numbers and names


@pytest.mark.parametrize(
    "assignment,expected",
    [
        ("prune.solver={name: admm, rho: .inf}", "admm setting rho: Input should be a finite number"),
        ("prune.admm_rho=.inf", "Input should be a finite number"),
        ("prune.damping_fraction=1e308", "prune.damping_fraction: Input should be less than or equal to 1000"),
        ("calibration.guidance_scale=.nan", "calibration.guidance_scale: Input should be a finite number"),
        ("calibration.seed=-1", "calibration.seed: Input should be greater than or equal to 0"),
        ("prune.sparsity=" + "[" * 50_000 + "]" * 50_000, "--set prune.sparsity: the value is nested too deeply"),
    ],
)
def test_non_finite_or_unbounded_numbers_are_refused_before_any_work(assignment, expected, tmp_path):
    recipe = "tiny-sd3-unstructured-50" if "admm_rho" not in assignment else "sd3-medium-unstructured-50-admm"
    result = invoke("prune", "-r", recipe, "--set", assignment, "--out", tmp_path / "o")
    assert expected in one_line_error(result)


def test_a_kept_indices_record_larger_than_the_base_is_refused_before_it_is_decoded(family, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(family / "fam-30", bad)
    config_path = bad / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    coupling = "transformer_blocks.0.attn"
    config["_obsdiff_kept"] = {coupling: {"of": 1 << 20, "kept": "f" * (1 << 18)}}  # 2^20 "heads" kept
    config_path.write_text(json.dumps(config))
    model = oh.OBSDiffSD3Transformer.from_pretrained(bad, subfolder="transformer")
    with pytest.raises(oh.CheckpointError, match=r"records 1048576 units where the base has \d+"):
        model.kept_selections()


def test_names_too_long_for_the_file_system_are_refused_before_any_work(tmp_path):
    long = "x" * 250  # 250 bytes: fits 255, not with the temporary names this tool makes from it
    result = invoke("prune", "-r", "tiny-sd3-unstructured-50", "--out", tmp_path / long)
    assert "is 250 bytes long" in one_line_error(result)
    # a recipe's name becomes a family member's folder, a branch and a tag: bounded so that all of them fit
    with pytest.raises(oh.InputError, match="has 250 characters; a recipe name has at most 200"):
        members((0.3,))[0].with_changes({"name": "m" * 250})


def test_names_that_are_not_git_refs_are_refused_before_any_work_or_commit(family, hub, tmp_path):
    for name in ("fam..50", "fam-50.lock", "fam-50."):
        with pytest.raises(oh.InputError, match="git"):
            members((0.3,))[0].with_changes({"name": name})
    (recipe,) = members((0.3,))
    with pytest.raises(oh.InputError, match="'main' is reserved"):
        run_family([recipe.with_changes({"name": "main"})], tmp_path / "zoo")
    pushed = invoke(
        "push", family / "fam-30", "--repo-id", "zoo/refs", "--tag", "a..b", "--token", hub.token,
        "--endpoint", hub.write_endpoint,
    )  # fmt: skip
    assert "tag 'a..b' is not a valid git branch or tag name" in one_line_error(pushed)
    assert not hub.double.repo("zoo/refs").path.exists()  # nothing was committed


def test_a_family_push_checks_every_member_and_tag_before_the_first_commit(family, hub, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(family, zoo)
    first = invoke(
        "push", zoo / "fam-50", "--repo-id", "zoo/all-or-nothing", "--tag", "fam-50-v1", "--token", hub.token,
        "--endpoint", hub.write_endpoint,
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    repo = hub.double.repo("zoo/all-or-nothing")
    before = repo.git("for-each-ref")
    result = invoke(
        "push", zoo, "--repo-id", "zoo/all-or-nothing", "--token", hub.token, "--endpoint", hub.write_endpoint
    )
    assert "tag fam-50-v1 already exists on zoo/all-or-nothing; nothing was pushed" in one_line_error(result)
    assert repo.git("for-each-ref") == before  # fam-30, checked and pushed first before, was not pushed now


# ------------------------------------------------------------------------ Hessian stores


@pytest.fixture(scope="module")
def saved_store(tmp_path_factory):
    """A genuine Hessian store of a short run, and the recipe that made it."""
    recipe = load_recipe("tiny-sd3-unstructured-50").with_changes(SHORT)
    folder = tmp_path_factory.mktemp("store")
    run_recipe(recipe, folder / "a", save_hessians=folder / "hs")
    return recipe, folder / "hs"


@pytest.mark.parametrize("forgery", ["zero", "infinite totals", "tiny totals", "digest", "beyond its diagonal"])
def test_a_forged_hessian_store_under_a_copied_identity_is_refused(forgery, saved_store, tmp_path):
    recipe, genuine = saved_store
    store = tmp_path / "hs"
    shutil.copytree(genuine, store)
    mark_owned(store, ["package-1.safetensors"], kind="hessians")  # the copy's own marker (a new inode)
    package = store / "package-1.safetensors"
    from safetensors import safe_open

    with safe_open(str(package), framework="pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(package)
    name = sorted(tensors)[0]
    if forgery == "zero":
        tensors = {k: torch.zeros_like(v) for k, v in tensors.items()}
    elif forgery in ("infinite totals", "tiny totals"):
        totals = json.loads(metadata["totals"])
        totals[name] = [float("inf") if forgery == "infinite totals" else 1e-300, totals[name][1]]
        metadata["totals"] = json.dumps(totals)
    elif forgery == "beyond its diagonal":
        tensors[name][1, 0] = 1e6 * tensors[name].diagonal().max()
    if forgery != "digest":
        from obsdiff_hub.pruning.hessian_store import content_sha256

        metadata["content_sha256"] = content_sha256(tensors)  # a forger who recomputes the digest
    else:
        tensors[name][0, 0] += 1.0  # bytes changed, digest not
    os.unlink(package)
    write_safetensors_file(package, tensors, metadata=metadata)
    mark_owned(store, ["package-1.safetensors"], kind="hessians")
    expected = {
        "zero": "non-zero diagonal",
        "infinite totals": "no finite positive totals",
        "tiny totals": "totals these timestep weights cannot give",
        "digest": "do not match the digest",
        "beyond its diagonal": "larger than its diagonal allows",
    }[forgery]
    with pytest.raises(oh.InputError, match=expected):
        run_recipe(recipe, tmp_path / "b", hessians=store)
    assert not (tmp_path / "b").exists()


# -------------------------------------------------------------------- adapters: safetensors only


def lora_of(model, rank=2, dtype=torch.float32, poison=None):
    layer = "transformer_blocks.0.attn.to_q"
    cols, rows = model.get_submodule(layer).in_features, model.get_submodule(layer).out_features
    tensors = {
        f"transformer.{layer}.lora_A.weight": torch.randn(rank, cols).to(dtype),
        f"transformer.{layer}.lora_B.weight": torch.randn(rows, rank).to(dtype),
    }
    if poison is not None:
        tensors[f"transformer.{layer}.lora_A.weight"][0, 0] = poison
    return tensors


def test_adapters_are_read_from_safetensors_only_and_torch_load_is_never_called(family, tmp_path, monkeypatch):
    pytest.importorskip("peft")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on an adapter file")

    monkeypatch.setattr(torch, "load", refuse)
    model = oh.OBSDiffSD3Transformer.from_pretrained(family / "fam-30", subfolder="transformer")
    lora = tmp_path / "lora"
    lora.mkdir()
    torch.save(lora_of(model), lora / "pytorch_lora_weights.bin")  # writing a pickle here is the test's own
    with pytest.raises(oh.InputError, match="safetensors files only"):
        model.load_lora_adapter(str(lora), weight_name="pytorch_lora_weights.bin")
    pipe = oh.load_pipeline(str(family / "fam-30"))
    with pytest.raises(oh.InputError, match="safetensors files only"):
        pipe.load_lora_weights(str(lora), weight_name="pytorch_lora_weights.bin")
    with pytest.raises(Exception) as refused:  # no weight name: diffusers looks for a safetensors file only
        pipe.load_lora_weights(str(lora))
    assert "torch.load was called" not in str(refused.value)


@pytest.mark.parametrize("poison", ["int", "nan"])
def test_adapter_tensors_must_be_finite_floating_point(family, tmp_path, poison):
    pytest.importorskip("peft")
    model = oh.OBSDiffSD3Transformer.from_pretrained(family / "fam-30", subfolder="transformer")
    tensors = lora_of(model, dtype=torch.int32) if poison == "int" else lora_of(model, poison=float("nan"))
    save_file(tensors, tmp_path / "lora.safetensors")
    with pytest.raises(oh.InputError, match="not floating point" if poison == "int" else "NaN or Inf"):
        model.load_lora_adapter(str(tmp_path / "lora.safetensors"))


# ------------------------------------------------------------------------------ leftovers


def test_an_interrupted_family_runs_leftover_is_named_and_cleaned_with_overwrite(tmp_path):
    root = tmp_path / "zoo"
    root.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = root / ".fam-50.deadbeef.tmp"
    leftover.mkdir()
    (leftover / "half-written.safetensors").write_bytes(b"x")
    with HeldFolder.open(leftover) as held:
        held.mark([], kind="temp")
    marker = json.loads((leftover / ".obsdiff-hub.json").read_text())
    marker["pid"] = int(gone.stdout)  # the process that made it has ended
    (leftover / ".obsdiff-hub.json").write_text(json.dumps(marker))
    with pytest.raises(
        oh.InputError, match="the unfinished output of an interrupted obsdiff-hub run; pass `overwrite`"
    ):
        check_family_root(root, ["fam-50"], overwrite=False)
    check_family_root(root, ["fam-50"], overwrite=True)
    assert os.listdir(root) == []
    (root / ".fam-50.cafef00d.tmp").mkdir()  # no marker: someone else's, never removed
    with pytest.raises(oh.InputError, match="which is not a member of this family"):
        check_family_root(root, ["fam-50"], overwrite=True)
    assert (root / ".fam-50.cafef00d.tmp").is_dir()


def test_a_family_push_that_stops_part_way_says_what_was_published_and_how_to_finish_or_undo(family, hub, monkeypatch):
    from obsdiff_hub.zoo import family as family_module

    real, calls = family_module.publish, []

    def second_fails(folder, *args, **kwargs):
        calls.append(folder.name)
        if len(calls) == 2:
            raise oh.HubError("the Hub refused the commit")
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(family_module, "publish", second_fails)
    result = invoke("push", family, "--repo-id", "zoo/half", "--token", hub.token, "--endpoint", hub.write_endpoint)
    message = one_line_error(result)
    assert "fam-50 could not be pushed (the Hub refused the commit)" in message
    assert "already published on zoo/half: fam-30 (branch fam-30, tag fam-30-v1)" in message
    assert "to undo, delete those branches and tags" in message


def test_every_adapter_loader_of_a_loaded_pipeline_refuses_pickles_and_damaged_tensors(family, tmp_path, monkeypatch):
    pytest.importorskip("peft")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on an adapter file")

    pipe = oh.load_pipeline(str(family / "fam-30"))  # unstructured: a plain SD3Transformer2DModel
    lora = tmp_path / "lora"
    lora.mkdir()
    tensors = lora_of(pipe.transformer)
    torch.save(tensors, lora / "l.bin")
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(oh.InputError, match="safetensors files only"):
        pipe.transformer.load_lora_adapter(str(lora), weight_name="l.bin")  # a component's own loader
    text = {
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.full((2, 8), float("nan"))
    }
    save_file(text, lora / "text.safetensors")
    with pytest.raises(oh.InputError, match="NaN or Inf"):
        pipe.load_lora_weights(str(lora), weight_name="text.safetensors")  # a text encoder's LoRA


def test_an_ip_adapter_is_read_from_safetensors_only_image_encoder_included(tmp_path, monkeypatch):
    from test_adapters import ip_adapter_state_dict
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from obsdiff_hub import tiny

    pipe = tiny.tiny_sdxl_pipeline()
    saved = oh.save_pruned(pipe, tmp_path / "sdxl")
    pipe = oh.load_pipeline(str(saved))
    state = ip_adapter_state_dict(pipe.unet)
    adapter = tmp_path / "ip"
    flat = {f"{part}.{k}": v for part, tensors in state.items() for k, v in tensors.items()}
    adapter.mkdir()
    save_file(flat, adapter / "ip.safetensors")
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=16, projection_dim=16,
        )
    )  # fmt: skip
    encoder.save_pretrained(adapter / "image_encoder")
    (adapter / "image_encoder" / "model.safetensors").unlink()  # only a pickle: pytorch_model.bin
    torch.save(encoder.state_dict(), adapter / "image_encoder" / "pytorch_model.bin")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or {})
    with pytest.raises(Exception):  # noqa: B017 - whichever refusal: transformers finds no safetensors file
        pipe.load_ip_adapter(str(adapter), subfolder="", weight_name="ip.safetensors")
    assert calls == []
    with pytest.raises(oh.InputError, match="safetensors files only"):
        pipe.load_ip_adapter(str(adapter), subfolder="", weight_name="ip.bin")
    state["ip_adapter"]["1.to_k_ip.weight"][0, 0] = float("nan")
    with pytest.raises(oh.InputError, match="NaN or Inf"):
        pipe.unet._load_ip_adapter_weights([state])


def test_the_pruned_classes_attention_processors_load_from_safetensors_only(tmp_path):
    unet = oh.OBSDiffUNet.from_config(oh.tiny.tiny_sdxl_pipeline().unet.config)
    with pytest.raises(oh.InputError, match="safetensors files only"):
        unet.load_attn_procs(str(tmp_path), weight_name="pytorch_lora_weights.bin")


def test_pull_into_a_local_dir_swapped_for_a_link_mid_download_writes_nothing_there(hub, family, tmp_path):
    from obsdiff_hub import hub as hub_module

    pushed = invoke(
        "push", family / "fam-30", "--repo-id", "zoo/pull-race", "--token", hub.token, "--endpoint", hub.write_endpoint
    )
    assert pushed.exit_code == 0, pushed.output
    local, victim = tmp_path / "local", victim_folder(tmp_path)
    local.mkdir()
    download = hub_module.HubClient.staged_snapshot

    def download_then_swap(self, *args, **kwargs):
        snapshot = download(self, *args, **kwargs)
        local.rename(tmp_path / "local-moved")
        local.symlink_to(victim)
        return snapshot

    hub_module.HubClient.staged_snapshot = download_then_swap
    try:
        with pytest.raises(OutputError, match="was replaced"):
            hub_module.pull("zoo/pull-race", local_dir=local)
    finally:
        hub_module.HubClient.staged_snapshot = download
    assert sorted(os.listdir(victim)) == ["precious.txt"]
