"""A non-editable install must find the recipes, card templates, prompt sets and weights."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_data_and_finds_it_outside_the_source_tree(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)], check=True
    )
    wheel = next(tmp_path.glob("obsdiff_hub-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "obsdiff_hub/_data/recipes/sdxl-30.yaml",
        "obsdiff_hub/_data/recipes/configs/sdxl-base-1.0.unet.json",
        "obsdiff_hub/_data/model_cards/obsdiff.md",
        "obsdiff_hub/data/calibration_prompts.txt",
        "obsdiff_hub/shapes/weights/pipeline/model_index.json",
        "obsdiff_hub/shapes/weights/scorer.safetensors",
        "obsdiff_hub/cli/main.py",
    ):
        assert required in names, required
    assert any(n.endswith("entry_points.txt") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "obsdiff-hub = obsdiff_hub.cli:main" in entry_points
    assert not any(n.startswith("cli/") for n in names)  # no top-level `cli` package to collide with others

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
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_installed_wheel_has_the_command_and_no_top_level_cli_package(tmp_path):
    """Installed from the wheel into a fresh environment (dependencies borrowed from this one, the
    source tree nowhere on the path): the command works, and no package named `cli` was installed."""
    import sysconfig

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"), str(ROOT)], check=True
    )
    wheel = next((tmp_path / "wheel").glob("obsdiff_hub-*.whl"))
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # this environment's packages, as a plain path entry: its own .pth files (the editable install) are not read
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    run = dict(capture_output=True, text=True, cwd=tmp_path, env={"PATH": str(fresh / "bin"), "HOME": str(tmp_path)})
    where = subprocess.run([python, "-c", "import obsdiff_hub; print(obsdiff_hub.__file__)"], **run)
    assert where.stdout.strip().startswith(str(purelib)), where.stderr[-2000:]
    assert "No module named 'cli'" in subprocess.run([python, "-c", "import cli"], **run).stderr
    shown = subprocess.run([fresh / "bin" / "obsdiff-hub", "--help"], **run)
    assert shown.returncode == 0 and "Usage: obsdiff-hub" in shown.stdout, shown.stderr[-2000:]
