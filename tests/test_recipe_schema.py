"""Recipe schema 2 (each method's and solver's settings under its name) and the migration of schema 1,
where obsdiff-hub 0.2 kept every setting flat on ``prune``: a schema-1 recipe loads as the identical
schema-2 recipe (same fields, same sha256) and prunes to the same checkpoint, byte for byte."""

import pytest
import yaml
from conftest import invoke

from obsdiff_hub.errors import InputError
from obsdiff_hub.zoo.recipes import load_recipe, recipe_names

FLAT_DEFAULTS = dict(
    percdamp=0.01,
    blocksize=128,
    rrf_k=60,
    head_saliency="reference",
    neuron_batch=32,
    admm_iterations=60,
    admm_rho=0.1,
    refit_iterations=100,
    refit_tolerance=1e-6,
)


def as_schema_1(data: dict) -> dict:
    """A schema-2 recipe as 0.2 wrote it: every method's and solver's setting flat on ``prune`` (written
    here independently of the package's migration, from 0.2's field list)."""
    prune = dict(data["prune"])
    method, solver = prune.pop("method"), prune.pop("solver")
    flat = {**FLAT_DEFAULTS, "percdamp": prune.pop("damping_fraction")}
    if method["name"] == "obs-diff":
        flat.update({k: method[k] for k in ("blocksize", "rrf_k", "head_saliency", "neuron_batch")})
    if solver["name"] == "admm":
        flat.update(
            admm_iterations=solver["iterations"],
            admm_rho=solver["rho"],
            refit_iterations=solver["refit_iterations"],
            refit_tolerance=solver["refit_tolerance"],
        )
    if solver["name"] == "obs+lsq":
        flat.update(refit_iterations=solver["iterations"], refit_tolerance=solver["tolerance"])
    return {
        **data,
        "schema_version": 1,
        "prune": {**prune, "method": method["name"], "solver": solver["name"], **flat},
    }


def write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_at_schema_1_is_the_same_recipe(name, tmp_path):
    recipe = load_recipe(name)
    migrated = load_recipe(write(tmp_path / "old.yaml", as_schema_1(recipe.model_dump(mode="json"))))
    assert migrated.model_dump() == recipe.model_dump() and migrated.sha256 == recipe.sha256
    assert migrated.to_yaml() == recipe.to_yaml()


def test_flat_settings_land_in_the_chosen_method_and_solver(tmp_path):
    recipe = load_recipe("tiny-sd3-unstructured-50")
    data = recipe.model_dump(mode="json")
    old = as_schema_1(data)
    old["prune"].update(solver="admm", admm_iterations=7, admm_rho=0.3, blocksize=32, percdamp=0.02)
    migrated = load_recipe(write(tmp_path / "old.yaml", old)).prune
    assert migrated.solver.model_dump() == {
        "name": "admm",
        "iterations": 7,
        "rho": 0.3,
        "rho_growth": 3.0,  # no schema-1 field: the default
        "rho_every": 5,
        "refit_iterations": 100,
        "refit_tolerance": 1e-6,
        "step_dtype": "bfloat16",
        "thorough_below": 1 << 19,
    }
    assert migrated.method.blocksize == 32 and migrated.damping_fraction == 0.02
    # settings of a solver or method not chosen had no effect in schema 1: dropped, the same recipe
    old["prune"].update(solver="obs", method="magnitude")
    assert (
        load_recipe(write(tmp_path / "inert.yaml", old)).prune
        == recipe.with_changes({"prune.method": "magnitude", "prune.damping_fraction": 0.02}).prune
    )


def test_a_schema_1_recipe_prunes_to_the_same_checkpoint_byte_for_byte(tmp_path):
    new = load_recipe("tiny-sd3-unstructured-50").with_changes(
        {
            "prune.solver": {"name": "admm", "iterations": 6, "rho": 0.2},
            "prune.method": {"name": "obs-diff", "blocksize": 32},
            "prune.damping_fraction": 0.02,
            "calibration.prompts.count": 4,
        }
    )
    paths = {"new": write(tmp_path / "new.yaml", new.model_dump(mode="json"))}
    paths["old"] = write(tmp_path / "old.yaml", as_schema_1(new.model_dump(mode="json")))
    outputs = {}
    for which, path in paths.items():
        result = invoke("prune", "-r", path, "--out", tmp_path / which, "--quiet")
        assert result.exit_code == 0, result.output
        outputs[which] = {
            p.relative_to(tmp_path / which).as_posix(): p.read_bytes()
            for p in sorted((tmp_path / which).rglob("*"))
            if p.is_file() and p.suffix in (".safetensors", ".yaml") or p.name == "config.json"
        }
    assert outputs["old"] == outputs["new"] and any(k.endswith(".safetensors") for k in outputs["new"])


def test_schema_1_names_in_overrides_change_the_field_that_holds_them_now():
    recipe = load_recipe("tiny-sd3-unstructured-50").with_changes({"prune.solver": "admm"})
    changed = recipe.with_changes({"prune.percdamp": 0.05, "prune.admm_rho": 0.3, "prune.blocksize": 64})
    assert changed.prune.damping_fraction == 0.05 and changed.prune.solver.rho == 0.3
    assert changed.prune.method.blocksize == 64
    with pytest.raises(InputError, match="admm_rho is a setting of solver admm, not of 'obs'"):
        load_recipe("tiny-sd3-unstructured-50").with_changes({"prune.admm_rho": 0.3})


def test_a_schema_version_this_release_does_not_know_is_one_line(tmp_path):
    data = {**load_recipe("tiny-sd3-unstructured-50").model_dump(mode="json"), "schema_version": 3}
    with pytest.raises(InputError, match="schema_version 3 is not supported"):
        load_recipe(write(tmp_path / "future.yaml", data))
