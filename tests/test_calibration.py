"""Calibration as deployed: the pipeline's own unconditional input, α by sampling step for
schedulers with warm-up or two calls per step, per-prompt seeds, trajectory checks, dtypes."""

import copy

import pytest
import torch
from diffusers import DiffusionPipeline, HeunDiscreteScheduler

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.maths.hessian import timestep_weights
from obsdiff_hub.pruning.calibration import PipelineCalibration
from obsdiff_hub.pruning.hooks import collect_hessians
from obsdiff_hub.pruning.prompts import builtin_prompts
from obsdiff_hub.pruning.steps import StepClock

CAL = dict(prompts={"count": 2}, batch_size=2, steps=3, resolution=32, guidance_scale=5.0)


def _record_unet_text(pipe, store):
    return pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: store.append(kw["encoder_hidden_states"].clone()), with_kwargs=True
    )


def test_sdxl_calibrates_on_zero_unconditional_embeddings_as_deployed():
    pipe = tiny.tiny_sdxl_pipeline()
    assert pipe.config.force_zeros_for_empty_prompt
    seen: list[torch.Tensor] = []
    handle = _record_unet_text(pipe, seen)
    deployed = copy.deepcopy(pipe)
    result = oh.prune(pipe, dict(sparsity=0.5, packages=1), calibration=CAL)
    handle.remove()
    assert result.report.calibration["unconditional"].startswith("zero embeddings")
    unconditional = torch.cat([x[: x.shape[0] // 2] for x in seen])  # CFG batches are [negative, positive]
    assert (
        torch.count_nonzero(unconditional) == 0
        and torch.count_nonzero(torch.cat([x[x.shape[0] // 2 :] for x in seen])) > 0
    )
    default: list[torch.Tensor] = []
    _record_unet_text(deployed, default)
    deployed.set_progress_bar_config(disable=True)
    deployed(
        builtin_prompts()[:2], num_inference_steps=1, height=32, width=32, guidance_scale=5.0, output_type="latent"
    )
    torch.testing.assert_close(default[0][:2], unconditional[:2], rtol=0, atol=0)


def test_sd3_keeps_its_own_rule_the_encoded_empty_prompt_and_a_set_negative_prompt_is_used():
    pipe = tiny.tiny_sd3_pipeline()
    seen: list[torch.Tensor] = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"].clone()), with_kwargs=True
    )
    result = oh.prune(pipe, dict(sparsity=0.5, packages=1), calibration=CAL)
    assert result.report.calibration["unconditional"] == "the encoded empty prompt (the pipeline's default)"
    empty = tiny.tiny_sd3_pipeline().encode_prompt("", None, None, device="cpu", do_classifier_free_guidance=False)[0]
    # batched and single encodings differ in the last bits; zeros would be off by the norm itself
    assert float(empty[0].detach().norm()) > 10
    torch.testing.assert_close(seen[0][0], empty[0], rtol=1e-4, atol=1e-4)
    with_negative = oh.prune(
        tiny.tiny_sdxl_pipeline(), dict(sparsity=0.5, packages=1), calibration={**CAL, "negative_prompt": "blurry"}
    )
    assert with_negative.report.calibration["unconditional"] == "negative prompt 'blurry'"


def _hessian_through_the_engine_parts(pipe, layer: str, steps: int) -> torch.Tensor:
    cfg = oh.CalibrationConfig(**{**CAL, "steps": steps})
    calibration = PipelineCalibration(pipe, cfg, builtin_prompts()[:2], torch.device("cpu"), torch.float32)
    clock = StepClock(timestep_weights("log_decrease", steps))
    with collect_hessians(pipe.unet, [layer], lambda: clock.alpha) as accumulators:
        calibration(pipe.unet, clock.set_step)
    assert clock.check() == 1
    return accumulators[layer].hessian()


@pytest.mark.parametrize("scheduler", ["pndm", "heun"])
def test_alpha_follows_the_scheduler_step_not_the_denoiser_call(scheduler):
    """PNDM calls the denoiser steps+1 times (a warm-up call), Heun twice per step. H must equal
    Σ α_step XᵀX with the step read from the scheduler's own state at each call."""
    steps, layer = 4, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"
    pipe = tiny.tiny_sd21_pipeline()
    if scheduler == "heun":
        pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    alphas = timestep_weights("log_decrease", steps)
    calls: list[tuple[int, torch.Tensor]] = []
    first_order = [0]

    def scheduler_step() -> int:
        s = pipe.scheduler
        if scheduler == "pndm":  # PLMS: calls 0 and 1 share the first timestep
            return max(s.counter - 1, 0)
        if s.state_in_first_order:
            first_order[0] += 1
        return first_order[0] - 1

    def record(module, args):
        x = args[0].reshape(-1, args[0].shape[-1]).double()
        calls.append((scheduler_step(), x))

    handle = pipe.unet.get_submodule(layer).register_forward_pre_hook(record)
    got = _hessian_through_the_engine_parts(pipe, layer, steps)
    handle.remove()
    per_step = sorted({s for s, _ in calls})
    assert per_step == list(range(steps)) and len(calls) == (steps + 1 if scheduler == "pndm" else 2 * steps - 1) * 1
    manual = sum(2 * alphas[s] * x.T @ x for s, x in calls) / sum(alphas[s] * x.shape[0] for s, x in calls)
    torch.testing.assert_close(got.double(), manual, rtol=1e-5, atol=1e-7)
    # and the whole run goes through (the shipped sd21 recipes use PNDM)
    result = oh.prune(pipe, dict(sparsity=0.5, packages=2), calibration={**CAL, "steps": steps})
    W = result.model.get_submodule(layer).weight
    assert int((W == 0).sum()) == round(0.5 * W.numel())


def test_prompt_i_uses_seed_plus_i_whatever_the_batch_size():
    layer = "transformer_blocks.1.attn.to_out.0"
    hessians = []
    for batch in (1, 2):
        pipe = tiny.tiny_sd3_pipeline()
        cfg = oh.CalibrationConfig(**{**CAL, "batch_size": batch, "prompts": {"count": 2}})
        calibration = PipelineCalibration(pipe, cfg, builtin_prompts()[:2], torch.device("cpu"), torch.float32)
        clock = StepClock(timestep_weights("log_decrease", 3))
        with collect_hessians(pipe.transformer, [layer], lambda: clock.alpha) as accumulators:
            calibration(pipe.transformer, clock.set_step)
        assert clock.check() == 2 // batch
        hessians.append(accumulators[layer].hessian())
    torch.testing.assert_close(hessians[0], hessians[1], rtol=1e-5, atol=1e-6)


def test_a_callable_that_runs_fewer_steps_than_declared_is_an_error():
    model = tiny.tiny_sd3_transformer().eval()
    inputs = [tiny.example_inputs(model, 2)]
    with pytest.raises(ValueError, match=r"trajectory 1 ran 25 of the 50 sampling steps"):
        oh.prune(model, {}, calibration=tiny.toy_calibration(inputs, 25), steps=50)
    with pytest.raises(ValueError, match=r"set step 3, but the timestep weights cover steps 0\.\.2"):
        oh.prune(model, {}, calibration=tiny.toy_calibration(inputs, 4), steps=3)

    def backwards(m, set_step):
        set_step(0)
        set_step(2)
        set_step(1)

    with pytest.raises(ValueError, match="from step 2 to 1"):
        oh.prune(model, {}, calibration=backwards, steps=3)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_structured_result_saves_with_diffusers_own_save_pretrained(family, tmp_path):
    pipe = tiny.TINY_PIPELINES[family]()
    result = oh.prune(pipe, dict(granularity="structured", sparsity=0.3, packages=1), calibration={**CAL, "steps": 2})
    model = result.model
    assert type(model).__name__.startswith("OBSDiff") and model.config["obsdiff_structure"]
    assert model.config["_obsdiff_provenance"]["granularity"] == "structured"
    assert getattr(result.pipeline, "unet" if family == "sdxl" else "transformer") is model
    model.save_pretrained(tmp_path / "model")  # diffusers' writer, not ours
    reloaded = type(model).from_pretrained(tmp_path / "model")
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))
    result.pipeline.save_pretrained(tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    denoiser = loaded.unet if family == "sdxl" else loaded.transformer
    assert type(denoiser) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(denoiser.state_dict().values(), model.state_dict().values()))
    # the pipeline got its encoders back and samples
    assert all(getattr(result.pipeline, n, None) is not None for n in ("text_encoder", "vae"))
    out = result.pipeline("a red circle", num_inference_steps=1, height=32, width=32, output_type="latent").images
    assert torch.isfinite(out).all()


def _untouched(before: dict, after: torch.nn.Module, pruned: set) -> int:
    state = after.state_dict()
    for name, value in before.items():
        if name not in pruned:
            assert state[name].dtype == value.dtype and torch.equal(state[name], value), name
    return len(before) - len(pruned)


@pytest.mark.parametrize("compute", [None, "bfloat16"])
def test_dtype_policy_untouched_weights_are_bit_identical_and_pruned_ones_rounded_once(compute):
    """fp16 model: default compute is fp32 on the CPU (exact widening), bf16 is lossy (master copy)."""
    torch.manual_seed(0)
    model = tiny.tiny_sd3_transformer().eval().half()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def calibrate(m, set_step):  # the model arrives in the compute dtype; inputs follow it
        tiny.toy_calibration([tiny.example_inputs(m, 2)], 2)(m, set_step)

    result = oh.prune(model, dict(sparsity=0.5, packages=1), calibration=calibrate, steps=2, dtype=compute)
    assert result.report.precision == {"checkpoint": "float16", "compute": compute or "float32"}
    pruned = {f"{r.name}.weight" for r in result.report.layers}
    assert _untouched(before, result.model, pruned) > 50 and len(pruned) > 20
    for name in pruned:
        W = result.model.state_dict()[name]
        assert W.dtype == torch.float16 and abs(float((W == 0).float().mean()) - 0.5) < 0.02
