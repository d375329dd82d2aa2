"""A non-editable install must find the recipes, card templates, prompt sets and weights."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_data_and_finds_it_outside_the_source_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("obsdiff_hub-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "obsdiff_hub/_data/recipes/sdxl-30.yaml",
        "obsdiff_hub/_data/recipes/configs/sdxl-base-1.0.unet.json",
        "obsdiff_hub/_data/model_cards/obsdiff.md",
        "obsdiff_hub/data/calibration_prompts.txt",
        "obsdiff_hub/shapes/weights/pipeline/model_index.json",
        "obsdiff_hub/shapes/weights/scorer.safetensors",
        "cli/main.py",
    ):
        assert required in names, required
    assert any(n.endswith("entry_points.txt") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "obsdiff-hub = cli.main:main" in entry_points

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import obsdiff_hub, pathlib;"
        "from obsdiff_hub.resources import data_dir;"
        "from obsdiff_hub.zoo.recipes import load_recipe, recipe_names;"
        "from obsdiff_hub.pruning.prompts import builtin_prompts;"
        f"assert pathlib.Path(obsdiff_hub.__file__).is_relative_to({str(site)!r});"
        f"assert data_dir('recipes').is_relative_to({str(site)!r});"
        "assert 'sdxl-30' in recipe_names() and load_recipe('sdxl-30').name == 'sdxl-30';"
        "assert (data_dir('model_cards') / 'obsdiff.md').is_file();"
        "assert len(builtin_prompts()) >= 200;"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""}, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
