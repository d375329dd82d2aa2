"""Recovery: distillation from the dense model keeps masks and shapes, is guarded, resumable, and heals."""

import copy
import json

import pytest
import torch
from conftest import invoke

import obsdiff_hub as oh
from obsdiff_hub.architectures.components import denoiser_of
from obsdiff_hub.errors import InputError
from obsdiff_hub.recovery.cache import CacheError, TeacherCache
from obsdiff_hub.recovery.heal import CACHE_FOLDER, TRAINING_FOLDER, recover
from obsdiff_hub.tiny import TINY_PIPELINES
from obsdiff_hub.zoo.recipes import load_recipe

CAL = dict(prompts={"count": 4}, batch_size=2, steps=2, resolution=32, guidance_scale=4.0)
RECOVER = dict(
    steps=8,
    learning_rate=1e-3,
    warmup_steps=0,
    batch_size=4,
    prompts={"source": "builtin", "path": "captions", "count": 8},
    validation_prompts=2,
    samples_per_prompt=1,
    validate_every=4,
    save_every=4,
    trajectory_steps=1,
)
# Random tiny models share little across prompts, so held-out validation improves only where pruning left a
# gap that generalises: the uncompensated baselines at high ratios. The SDXL-like UNet needs a smaller step.
PRUNE = {
    "unstructured": dict(method="magnitude", granularity="unstructured", sparsity=0.7),
    "n:m": dict(method="magnitude", granularity="n:m", n=2, m=4),
    "structured": dict(method="l1", granularity="structured", sparsity=0.5),
}
LEARNING_RATE = {"sdxl": 1e-4, "sd3": 1e-3, "flux": 1e-3}


def pruned(name: str, granularity: str):
    pipe = TINY_PIPELINES[name]()
    oh.prune(pipe, dict(packages=1, **PRUNE[granularity]), calibration=CAL)
    return pipe


def weights(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in denoiser_of(pipe).state_dict().items()}


@pytest.mark.parametrize("granularity", ["unstructured", "n:m", "structured"])
@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux"])
def test_recovery_keeps_masks_and_shapes_and_lowers_the_loss(name, granularity, tmp_path):
    pipe = pruned(name, granularity)
    before = weights(pipe)
    teacher = denoiser_of(TINY_PIPELINES[name]())
    settings = {**RECOVER, "learning_rate": LEARNING_RATE[name]}
    report = recover(pipe, teacher, settings, calibration=CAL, work=tmp_path)
    after = weights(pipe)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    if granularity != "structured":
        matrices = [k for k, v in before.items() if v.dim() >= 2]
        for key in matrices:
            assert torch.equal(before[key] == 0, after[key] == 0), key  # the zero pattern, bit for bit
        assert sum(int((before[k] == 0).sum()) for k in matrices) > 0
    assert report.kept_step > 0 and report.best_validation < report.one_shot_validation
    assert min(v for _, v in report.validation) == report.best_validation
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert report.rows["train"] > 0 and report.rows["validation"] > 0


def test_a_diverging_heal_is_rejected_and_the_one_shot_weights_are_kept(tmp_path):
    pipe = pruned("sdxl", "structured")
    before = weights(pipe)
    teacher = denoiser_of(TINY_PIPELINES["sdxl"]())
    report = recover(pipe, teacher, {**RECOVER, "learning_rate": 1.0, "patience": 1}, calibration=CAL, work=tmp_path)
    assert report.rejected and report.kept_step == 0
    assert report.stopped_early and report.steps_run == RECOVER["validate_every"]
    assert all(v > report.one_shot_validation for step, v in report.validation if step)
    after = weights(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)


class Interrupt(Exception):
    pass


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    start = pruned("sd3", "unstructured")
    teacher = denoiser_of(TINY_PIPELINES["sd3"]())
    whole = copy.deepcopy(start)
    recover(whole, copy.deepcopy(teacher), RECOVER, calibration=CAL, work=tmp_path / "whole")

    def stop_after_six(step, total, validation):
        if step == 6:
            raise Interrupt

    broken = copy.deepcopy(start)
    with pytest.raises(Interrupt):
        recover(
            broken, copy.deepcopy(teacher), RECOVER, calibration=CAL, work=tmp_path / "run", progress=stop_after_six
        )
    assert (tmp_path / "run" / TRAINING_FOLDER / "progress.json").is_file()  # saved at step 4
    resumed = copy.deepcopy(start)
    report = recover(resumed, copy.deepcopy(teacher), RECOVER, calibration=CAL, work=tmp_path / "run", resume=True)
    assert report.steps_run == RECOVER["steps"]
    assert "record" not in report.seconds  # the teacher's data was read back, not recorded again
    expected, got = weights(whole), weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_the_cache_refuses_another_runs_data_and_changed_files(tmp_path):
    pipe = pruned("flux", "unstructured")
    teacher = denoiser_of(TINY_PIPELINES["flux"]())
    settings = {**RECOVER, "steps": 0, "samples_per_prompt": 2}
    report = recover(pipe, teacher, settings, calibration=CAL, work=tmp_path, identity="run-a")
    # Flux samples without CFG: one row per trajectory and step; every trajectory of a held-out prompt validates
    assert report.rows == {"train": 6 * 2, "validation": 2 * 2}
    folder = tmp_path / CACHE_FOLDER
    manifest = json.loads((folder / "cache.json").read_text())
    with pytest.raises(CacheError, match="another run"):
        TeacherCache(folder, "not-" + manifest["identity"])
    TeacherCache(folder, manifest["identity"])  # the genuine cache opens
    shard = folder / manifest["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="changed since it was recorded") as error:
        TeacherCache(folder, manifest["identity"])
    assert "\n" not in str(error.value)
    with pytest.raises(CacheError):  # a resumed run reads the same cache, and refuses it the same way
        recover(pipe, teacher, settings, calibration=CAL, work=tmp_path, identity="run-a", resume=True)


def test_recovery_settings_are_checked_before_any_work(tmp_path):
    pipe = TINY_PIPELINES["sdxl"]()
    with pytest.raises(InputError, match="validation_prompts"):
        recover(pipe, pipe.unet, {"validation_prompts": 10, "prompts": {"count": 10}}, calibration=CAL, work=tmp_path)
    with pytest.raises(InputError, match="distinct prompts outside the evaluation"):
        recover(
            pipe,
            pipe.unet,
            {**RECOVER, "prompts": {"source": "inline", "texts": ["a", "b", "c"]}, "validation_prompts": 1},
            calibration=CAL,
            work=tmp_path,
            exclude_prompts=["a"],
        )
    assert not any(tmp_path.iterdir())


def test_recover_command_heals_a_checkpoint_that_loads_like_any_other(tmp_path):
    from diffusers import DiffusionPipeline

    from obsdiff_hub import OBSDiffUNet

    one_shot = tmp_path / "one-shot"
    pruning = ("--set", "prune.method=l1", "--set", "prune.sparsity=0.5")
    assert invoke("prune", "-r", "tiny-sdxl-structured-30", "--out", one_shot, *pruning, "--quiet").exit_code == 0
    out = tmp_path / "healed"
    settings = {**RECOVER, "learning_rate": LEARNING_RATE["sdxl"]}
    sets = [f"recover.{k}={json.dumps(v)}" for k, v in settings.items() if k != "steps"]
    options = [a for s in sets for a in ("--set", s)]
    result = invoke("recover", one_shot, "--out", out, "--steps", 8, *options, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["recovery"]["kept_step"] > 0
    assert not (tmp_path / "healed.partial").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["recovery"]["steps_run"] == 8 and report["provenance"]["recovery"].endswith("steps kept")
    assert "## Recovery" in (out / "README.md").read_text()
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.recover is not None and recipe.recover.steps == 8 and recipe.derived_from.name == recipe.name
    source, healed = OBSDiffUNet.from_pretrained(one_shot / "unet"), OBSDiffUNet.from_pretrained(out / "unet")
    assert {k: v.shape for k, v in healed.state_dict().items()} == {k: v.shape for k, v in source.state_dict().items()}
    assert not all(torch.equal(v, healed.state_dict()[k]) for k, v in source.state_dict().items())
    pipe = DiffusionPipeline.from_pretrained(out)
    assert torch.equal(pipe.unet.state_dict()["conv_in.weight"], healed.state_dict()["conv_in.weight"])

    again = invoke("recover", out, "--out", tmp_path / "twice")
    assert again.exit_code != 0 and "already recovered" in again.output

    # The effective recipe reproduces the checkpoint: prune with its recover stage = prune, then recover.
    rebuilt = tmp_path / "rebuilt"
    assert invoke("prune", "-r", out / "recipe.yaml", "--out", rebuilt, "--quiet").exit_code == 0
    expected, got = healed.state_dict(), OBSDiffUNet.from_pretrained(rebuilt / "unet").state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not (tmp_path / "rebuilt.partial").exists()


def test_an_interrupted_recover_stage_resumes_to_the_same_checkpoint(tmp_path, monkeypatch):
    from obsdiff_hub import OBSDiffUNet
    from obsdiff_hub.recovery.training import TrainingState

    settings = {**RECOVER, "learning_rate": LEARNING_RATE["sdxl"]}
    sets = ["prune.method=l1", "prune.sparsity=0.5", *(f"recover.{k}={json.dumps(v)}" for k, v in settings.items())]
    options = ["-r", "tiny-sdxl-structured-30", *[a for s in sets for a in ("--set", s)], "--quiet"]
    assert invoke("prune", *options, "--out", tmp_path / "whole").exit_code == 0

    store = TrainingState.store

    def store_then_stop(self, *args, **kwargs):
        store(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingState, "store", store_then_stop)
    stopped = invoke("prune", *options, "--out", tmp_path / "run")
    assert stopped.exit_code != 0 and "--resume" in stopped.output
    partial = tmp_path / "run.partial"
    assert (partial / "one-shot" / "report.json").is_file() and (partial / "recover" / "teacher").is_dir()
    monkeypatch.setattr(TrainingState, "store", store)
    refused = invoke("prune", *options, "--out", tmp_path / "run")
    assert refused.exit_code != 0 and "recovery begun" in refused.output
    assert invoke("prune", *options, "--out", tmp_path / "run", "--resume").exit_code == 0
    expected = OBSDiffUNet.from_pretrained(tmp_path / "whole" / "unet").state_dict()
    got = OBSDiffUNet.from_pretrained(tmp_path / "run" / "unet").state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not partial.exists()
