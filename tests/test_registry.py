"""Methods and solvers by name, each with its own settings: a solver that exists only in this test is one
class, and the recipe schema, the card, ``recipes methods`` and the engine all pick it up."""

import json
from typing import ClassVar, Literal

import pytest
import torch
from conftest import invoke
from pydantic import Field

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.maths.factor import damp_hessian
from obsdiff_hub.pruning.methods import METHODS
from obsdiff_hub.pruning.report import PruneReport
from obsdiff_hub.pruning.solvers import SOLVERS, RefiningSolver
from obsdiff_hub.zoo.cards import calibration_rows
from obsdiff_hub.zoo.recipes import Recipe, load_recipe


class ExactRefit(RefiningSolver):
    """The start's mask, each row's kept weights solved exactly (a dense solve per row: small layers only)."""

    name: Literal["test-exact-refit"] = "test-exact-refit"
    ridge: float = Field(0.0, ge=0, description="added to the kept block's diagonal, relative to its mean")
    summary: ClassVar[str] = "test only: exact per-row least squares on the OBS mask"
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "n:m")

    def card_text(self, granularity):
        return f"exact per-row re-fit (ridge {self.ridge})"

    def refine(self, problem, starts):
        Hd, _ = damp_hessian(problem.H, problem.damping_fraction, dtype=torch.float64)
        out = []
        for W, (_, mask) in zip(problem.weights, starts):
            W = W.double()
            fitted = torch.zeros_like(W)
            for row in range(W.shape[0]):
                kept = (~mask[row]).nonzero().flatten()
                block = Hd[kept][:, kept]
                block = block + self.ridge * block.diagonal().mean() * torch.eye(len(kept), dtype=block.dtype)
                fitted[row, kept] = torch.linalg.solve(block, (W[row] @ Hd)[kept])
            out.append((fitted.to(problem.weights[0].dtype), mask))
        return out


@pytest.fixture
def registered():
    SOLVERS.register(ExactRefit)
    yield ExactRefit
    SOLVERS.unregister(ExactRefit.name_of())


def test_a_solver_defined_here_is_a_recipe_choice_a_card_line_and_a_listing(registered):
    recipe = load_recipe("tiny-sd3-unstructured-50").with_changes(
        {"prune.solver": {"name": "test-exact-refit", "ridge": 0.5}}
    )
    assert recipe.prune.solver == ExactRefit(ridge=0.5)
    assert (
        load_recipe("tiny-sd3-unstructured-50").with_changes({"prune.solver": "test-exact-refit"}).prune.solver.ridge
        == 0
    )
    schema = json.dumps(Recipe.model_json_schema())
    assert '"test-exact-refit"' in schema and '"ridge"' in schema
    report = PruneReport(family="mmdit", model_class="", config={}, params_before=0)
    assert ("solver", "exact per-row re-fit (ridge 0.5)") in calibration_rows(recipe, report)
    listed = json.loads(invoke("recipes", "methods", "--json").output)
    (entry,) = [s for s in listed["solver"] if s["name"] == "test-exact-refit"]
    assert entry["settings"]["ridge"]["default"] == 0.0 and entry["granularities"] == ["unstructured", "n:m"]
    assert "test-exact-refit" in invoke("recipes", "methods").output
    with pytest.raises(oh.InputError, match="solver test-exact-refit applies to granularity unstructured or n:m"):
        oh.PruneConfig.coerce({"granularity": "structured", "solver": "test-exact-refit"})


def test_the_engine_runs_a_solver_defined_here(registered):
    """Its result is what it says: every layer's kept weights at the least-squares optimum of its own Hessian,
    which obs+lsq reaches by conjugate gradients."""
    results = {}
    for solver in ({"name": "test-exact-refit"}, {"name": "obs+lsq", "iterations": 2000, "tolerance": 1e-12}):
        torch.manual_seed(0)
        model = tiny.tiny_sd3_transformer().eval()
        calibration = tiny.toy_calibration([tiny.example_inputs(model, 2, seed) for seed in range(2)], 3)
        result = oh.prune(model, {"packages": 1, "solver": solver}, calibration=calibration, steps=3)
        results[solver["name"]] = (model, result.report)
    (exact, exact_report), (lsq, _) = results["test-exact-refit"], results["obs+lsq"]
    assert exact_report.mean_start_error > exact_report.mean_relative_error
    for record in exact_report.layers:
        got, want = exact.get_submodule(record.name).weight, lsq.get_submodule(record.name).weight
        assert torch.equal(got == 0, want == 0)
        assert float((got - want).detach().norm() / want.detach().norm()) < 1e-3


def test_every_registered_choice_is_in_the_schema_the_listing_and_its_card_line():
    schema = json.dumps(Recipe.model_json_schema())
    listed = json.loads(invoke("recipes", "methods", "--json").output)
    base = load_recipe("tiny-sd3-unstructured-50")
    report = PruneReport(family="mmdit", model_class="", config={}, params_before=0)
    for kind, registry in (("method", METHODS), ("solver", SOLVERS)):
        assert [entry["name"] for entry in listed[kind]] == registry.names()
        for cls in registry:
            assert f'"{cls.name_of()}"' in schema
            granularity = cls.granularities[0]
            changes = {f"prune.{kind}": cls.name_of(), "prune.granularity": granularity}
            if granularity == "n:m":
                changes.update({"prune.n": 2, "prune.m": 4})
            if kind == "solver" and cls.refines:
                changes["prune.method"] = "obs-diff"
            recipe = base.with_changes(changes)
            assert (kind, cls().card_text(granularity)) in calibration_rows(recipe, report)


def test_unknown_and_misspelt_choices_are_one_line_with_the_closest_name():
    with pytest.raises(oh.InputError, match=r"prune.solver: unknown solver 'adm'; did you mean admm\?"):
        load_recipe("tiny-sd3-unstructured-50").with_changes({"prune.solver": "adm"})
    with pytest.raises(
        oh.InputError, match=r"admm setting iteratons: Extra inputs are not permitted; did you mean iterations\?"
    ):
        load_recipe("tiny-sd3-unstructured-50").with_changes({"prune.solver": {"name": "admm", "iteratons": 3}})
