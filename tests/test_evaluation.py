"""obsdiff-hub eval and bench: measured quality and speed, into eval.json, bench.json and the card."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
from typer.testing import CliRunner

import obsdiff_hub as oh
import obsdiff_hub.tiny  # noqa: F401 - oh.tiny
from obsdiff_hub.cli import app
from obsdiff_hub.zoo.metrics import frechet_distance

runner = CliRunner()
# a shorter calibration than the recipe's: the checkpoint only has to be a pruned model, not the best one
SHORT = ["--set", "calibration.prompts.count=8", "--set", "calibration.steps=10"]
SHAPES_EVAL = [
    "--prompts",
    "builtin:shapes",
    "--num-prompts",
    "60",
    "--num-inference-steps",
    "20",
    "--guidance-scale",
    "4",
    "--resolution",
    "32",
    "--batch-size",
    "60",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from metric_models import train_tiny_clip

    return train_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "ckpt"
    result = invoke(
        "prune", "--recipe", "tiny-shapes-unstructured-50", "--out", out, "--quiet", "--set", "evaluation=null", *SHORT
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def destroyed_checkpoint(shapes_checkpoint, tmp_path_factory):
    """The pruned shapes model with every attention output zeroed: a model that must score worse."""
    pipe = DiffusionPipeline.from_pretrained(shapes_checkpoint)
    for name, module in pipe.unet.named_modules():
        if name.endswith(("attn1.to_out.0", "attn2.to_out.0")):
            module.weight.data.zero_()
            module.bias.data.zero_()
    return oh.save_pruned(pipe, tmp_path_factory.mktemp("destroyed") / "ckpt")


def metrics_of(folder: Path) -> dict[str, dict]:
    return {m["name"]: m for m in json.loads((folder / "eval.json").read_text())["metrics"]}


def test_the_tiny_clip_aligns_images_and_captions(tiny_clip):
    """Sanity of the metric model itself: the right caption beats a wrong one."""
    from transformers import CLIPModel, CLIPProcessor

    from obsdiff_hub.shapes.dataset import evaluation_scenes, sample_batch

    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    images, captions, _ = sample_batch(64, seed=424242)
    from obsdiff_hub.shapes.pipeline import to_pil

    inputs = processor(text=captions, images=to_pil(images), return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert float((logits.argmax(1) == torch.arange(64)).float().mean()) > 0.2  # chance is 1/64
    assert len(evaluation_scenes()) == 60


def test_eval_on_the_shapes_model_end_to_end(shapes_checkpoint, destroyed_checkpoint, tiny_clip):
    common = [
        "--base",
        "builtin:tiny-shapes",
        "--metrics",
        "shapes,psnr,clip,fid",
        "--fid-features",
        "clip",
        "--clip-model",
        tiny_clip,
        *SHAPES_EVAL,
    ]
    for folder in (shapes_checkpoint, destroyed_checkpoint):
        result = invoke("eval", folder, *common, "--quiet")
        assert result.exit_code == 0, result.output
        assert result.output.strip() == str(folder / "eval.json")
    record = json.loads((shapes_checkpoint / "eval.json").read_text())
    assert record["settings"]["num"] == 60 and len(record["settings"]["prompts_sha256"]) == 64
    good, bad = metrics_of(shapes_checkpoint), metrics_of(destroyed_checkpoint)
    assert set(good) == {"caption_accuracy", "attribute_accuracy", "psnr_vs_dense", "clip_score", "fid_vs_dense"}
    for m in good.values():
        low, high = m["ci95"]
        assert m["samples"] == 60 and low <= m["pruned"] <= high and math.isfinite(high)
    # every metric moves the right way for a deliberately destroyed model
    assert bad["psnr_vs_dense"]["pruned"] < good["psnr_vs_dense"]["pruned"] - 3
    assert bad["fid_vs_dense"]["pruned"] > good["fid_vs_dense"]["pruned"]
    assert bad["clip_score"]["pruned"] < good["clip_score"]["pruned"]
    assert bad["caption_accuracy"]["pruned"] < good["caption_accuracy"]["pruned"]
    assert good["clip_score"]["dense"] == bad["clip_score"]["dense"]  # the same dense images, from the cache


def test_eval_agrees_with_the_benchmark_path_for_the_same_seeds(shapes_checkpoint, shapes_dense):
    """benchmarks/shapes_quality.py scores float images in one batch; eval scores the saved PNGs.
    Same prompts and seeds: the same caption accuracy, PSNR within 8-bit quantisation."""
    from obsdiff_hub.shapes.pipeline import evaluate

    result = invoke(
        "eval",
        shapes_checkpoint,
        "--base",
        "builtin:tiny-shapes",
        "--metrics",
        "shapes,psnr",
        *SHAPES_EVAL,
        "--quiet",
        "--overwrite",
    )
    assert result.exit_code == 0, result.output
    got = metrics_of(shapes_checkpoint)
    dense_scores, dense_images = shapes_dense
    pruned_scores, _ = evaluate(DiffusionPipeline.from_pretrained(shapes_checkpoint), reference=dense_images)
    assert abs(got["caption_accuracy"]["dense"] - dense_scores["all"]) <= 1 / 60
    assert abs(got["caption_accuracy"]["pruned"] - pruned_scores["all"]) <= 1 / 60
    assert abs(got["psnr_vs_dense"]["pruned"] - pruned_scores["psnr_vs_dense"]) < 0.15


def test_frechet_distance_is_exact_and_zero_for_a_set_with_itself():
    rng = np.random.default_rng(0)
    for n, d in ((50, 128), (400, 32)):  # fewer samples than dimensions, and more
        a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
        b = rng.normal(size=(n + 7, d)) + 0.5

        def reference(x, y):  # the textbook formula with a symmetric matrix square root
            mx, my = x.mean(0), y.mean(0)
            sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
            w, v = np.linalg.eigh(sx)
            root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
            middle = np.linalg.eigvalsh(root @ sy @ root)
            return float(
                ((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * np.sqrt(np.clip(middle, 0, None)).sum()
            )

        assert frechet_distance(a, b) == pytest.approx(reference(a, b), rel=1e-8)
        assert abs(frechet_distance(a, a)) < 1e-8 * np.trace(np.cov(a, rowvar=False))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--metrics", "fid"], "obsdiff-hub[eval]"),
        (["--metrics", "imagereward"], "obsdiff-hub[imagereward]"),
        (["--metrics", "clip", "--clip-model", "{tmp}/no-clip"], "CLIP model {tmp}/no-clip cannot be loaded"),
        (["--metrics", "psnr", "--reference", "{tmp}/no-coco"], "reference folder {tmp}/no-coco does not exist"),
        (["--metrics", "shapes", "--prompts", "builtin:captions"], "use --prompts builtin:shapes"),
        (
            ["--metrics", "psnr,lpips"],
            "unknown metric 'lpips' in --metrics; available: psnr, shapes, clip, fid, imagereward",
        ),
        (["--num-prompts", "0"], "num: Input should be greater than or equal to 1"),
    ],
)
def test_a_metric_that_cannot_run_fails_before_sampling_and_writes_nothing(shapes_checkpoint, tmp_path, args, message):
    from obsdiff_hub.zoo.evaluation import cache_root

    before = sorted(cache_root().rglob("*.png")) if cache_root().exists() else []
    filled = [a.format(tmp=tmp_path) for a in args]
    result = invoke(
        "eval",
        shapes_checkpoint,
        "--base",
        "builtin:tiny-shapes",
        "--num-prompts",
        "2",
        "--num-inference-steps",
        "2",
        *filled,
        "--out",
        tmp_path / "e",
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], result.output
    assert not (tmp_path / "e").exists()
    assert (sorted(cache_root().rglob("*.png")) if cache_root().exists() else []) == before  # no image was sampled


def test_a_failed_bench_leaves_no_results_folder(shapes_checkpoint, tmp_path):
    result = invoke("bench", shapes_checkpoint, "--resolution", "33", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "--resolution must be a multiple of 2" in result.output
    assert not (tmp_path / "b").exists()


def test_results_never_go_into_a_folder_this_tool_did_not_write(shapes_checkpoint, tmp_path):
    foreign = tmp_path / "downloaded"
    (foreign / "unet").mkdir(parents=True)
    result = invoke("eval", foreign, "--base", "builtin:tiny-shapes")
    assert result.exit_code == 2 and "pass --out FOLDER" in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["unet"]


def test_a_card_with_measurements_round_trips_and_publishes(hub, shapes_checkpoint, tiny_clip, tmp_path):
    from obsdiff_hub.hub import pull

    assert (
        invoke(
            "eval",
            shapes_checkpoint,
            "--base",
            "builtin:tiny-shapes",
            "--metrics",
            "shapes,psnr,clip",
            "--clip-model",
            tiny_clip,
            *SHAPES_EVAL,
            "--quiet",
            "--overwrite",
        ).exit_code
        == 0
    )
    assert invoke("card", shapes_checkpoint, "--repo-id", "zoo/shapes-50").exit_code == 0
    card = ModelCard.load(shapes_checkpoint / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    measured = metrics_of(shapes_checkpoint)
    assert results == {name: pytest.approx(m["pruned"], rel=1e-6) for name, m in measured.items()}
    assert "95% interval" in card.text and "samples.png" in card.text
    pushed = invoke(
        "push", shapes_checkpoint, "--repo-id", "zoo/shapes-50", "--token", hub.token, "--endpoint", hub.write_endpoint
    )
    assert pushed.exit_code == 0, pushed.output
    path = pull("zoo/shapes-50", local_dir=tmp_path / "pulled").path
    assert (path / "eval.json").is_file() and (path / "samples.png").is_file()
    remote = ModelCard.load("zoo/shapes-50")
    assert {r.metric_type for r in remote.data.eval_results} == set(measured)


def test_bench_on_cpu_matches_the_plan(tmp_path):
    out = tmp_path / "ckpt"
    assert invoke("prune", "--recipe", "tiny-sdxl-structured-30", "--out", out, "--quiet").exit_code == 0
    result = invoke("bench", out, "--resolution", "128", "--repeats", "10")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "bench.json").read_text())
    assert record["base"] == "builtin:tiny-sdxl" and record["device"].startswith("CPU")
    vae = json.loads((out / "vae" / "config.json").read_text())
    assert record["latent_size"] == 128 // 2 ** (
        len(vae["block_out_channels"]) - 1
    )  # the pipeline's own VAE factor, not SD's 8
    dense = dict(oh.tiny.tiny_sdxl_unet().config)
    # plan counts SD's 8 pixels per latent: 128 px through this VAE is plan's resolution 8 × latent_size
    expected = oh.plan(
        {**dense, "_class_name": "UNet2DConditionModel"},
        {"granularity": "structured", "sparsity": 0.3},
        resolution=8 * record["latent_size"],
    )
    assert record["params"] == {"dense": expected.params_before, "pruned": expected.params_after}
    assert record["flops"]["dense"] == expected.flops_before and record["flops"]["pruned"] == expected.flops_after
    for which in ("dense", "pruned"):
        timing = record["denoiser"][which]
        assert timing["repeats"] == 10 and 0 < timing["p25_ms"] <= timing["median_ms"] <= timing["p75_ms"]
    blocks = oh.architectures.architecture_of(oh.tiny.tiny_sdxl_unet()).blocks(oh.tiny.tiny_sdxl_unet())
    assert [b["block"] for b in record["blocks"]] == blocks and all(
        b["dense_ms"] > 0 and b["pruned_ms"] > 0 for b in record["blocks"]
    )
    assert invoke("card", out).exit_code == 0
    assert "## Speed" in (out / "README.md").read_text() and "denoiser forward" in (out / "README.md").read_text()
    assert invoke("bench", out, "--repeats", "0").exit_code == 2
