"""Does ADMM find better heads / FFN neurons to remove than group OBS? (Issue: structured refinement.)

Group ADMM, written here as the experiment it is: each output projection's ridge step
``B = (W H − V + ρ Z)(H + ρ I)⁻¹`` in the scaled problem (as ``obsdiff_hub.maths.admm``), a projection
that keeps, per selection, the groups of largest ``‖B + V/ρ‖`` summed over the layers sharing them, the
package's default schedule, then the exact least-squares fit of the kept columns. Its removed set is
compared, on the layers' own objective, with greedy group OBS's (``obs_remove_groups``), started from
group OBS's result and from the dense weights. Layers: synthetic real shapes (correlated inputs of
unequal scale), and one head set feeding two projections (MMDiT's joint attention).

    python benchmarks/structured_admm.py [--shapes 1280x5120/1,1536x1536/64,1536x1536/64x2]

The measured answer (BENCHMARKS.md, "Structured ADMM"): it does not win, so ``solver: admm`` stays
unstructured and N:M only.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Sequence

import torch

from obsdiff_hub.maths.admm import AdmmSettings, layer_error, ridge_inverse
from obsdiff_hub.maths.factor import prepare_layer
from obsdiff_hub.maths.group_obs import GroupSelection, column_groups, obs_remove_groups


def group_admm(
    weights: Sequence[torch.Tensor],
    hessians: Sequence[torch.Tensor],
    groups: Sequence[torch.Tensor],
    count: int,
    starts: Sequence[torch.Tensor],
    settings: AdmmSettings = AdmmSettings(),
) -> tuple[list[torch.Tensor], list[int]]:
    """ADMM's own removed set (``count`` groups, shared by every layer) and the exact fit of the rest."""
    prepared = [prepare_layer(W, H, 0.01) for W, H in zip(weights, hessians)]
    width = prepared[0][0].shape[1]
    owner = torch.full((width,), len(groups), dtype=torch.long)
    for index, group in enumerate(groups):
        owner[group] = index
    state = []
    for (W, Hd), start in zip(prepared, starts):
        d = Hd.diagonal().sqrt()
        Hs = Hd / d.unsqueeze(0) / d.unsqueeze(1)
        state.append({"d": d, "Hs": Hs, "target": (W * d) @ Hs, "Z": start * d, "V": torch.zeros_like(W)})
    rho, removed = settings.rho, []
    for step in range(settings.iterations):
        if step and step % settings.rho_every == 0:
            rho *= settings.rho_growth
        proposals = []
        for s in state:
            if step % settings.rho_every == 0:
                s["inverse"] = ridge_inverse(s["Hs"], rho).to(settings.step_dtype)
            s["B"] = ((s["target"] - s["V"] + rho * s["Z"]).to(settings.step_dtype) @ s["inverse"]).float()
            proposals.append(s["B"] + s["V"] / rho)
        norms = sum((U**2).sum(0) for U in proposals)
        scores = torch.zeros(len(groups) + 1).index_add_(0, owner, norms)[:-1]
        removed = sorted(torch.topk(scores, count, largest=False).indices.tolist())
        gone = torch.cat([groups[g] for g in removed])
        for s, U in zip(state, proposals):
            U[:, gone] = 0.0
            s["V"].add_(s["B"] - U, alpha=rho)
            s["Z"] = U
    kept = torch.ones(width, dtype=torch.bool)
    kept[torch.cat([groups[g] for g in removed])] = False
    fitted = []
    for W, Hd in prepared:
        out = torch.zeros_like(W)
        out[:, kept] = torch.cholesky_solve((W @ Hd[:, kept]).T, torch.linalg.cholesky(Hd[kept][:, kept])).T
        fitted.append(out)
    return fitted, removed


def error(weights, candidates, hessians) -> float:
    return sum(float(layer_error(W, c, H).sum()) for W, c, H in zip(weights, candidates, hessians))


def layer(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(cols, 2 * cols, generator=g)
    X = (X + 0.5 * X.roll(1, 0)) * torch.exp(torch.randn(cols, 1, generator=g))
    return torch.randn(rows, cols, generator=g), 2 * X @ X.T / X.shape[1]


def compare(name: str, weights, hessians, groups, count: int, batch: int) -> None:
    selection = [GroupSelection(tuple(range(len(groups))), count, batch)]
    start = time.perf_counter()
    obs, (gone,) = obs_remove_groups(weights, hessians, groups, selection)
    t_obs = time.perf_counter() - start
    base = error(weights, obs, hessians)
    cells = []
    for label, starts in (("from group OBS", obs), ("from dense", weights)):
        start = time.perf_counter()
        fitted, removed = group_admm(weights, hessians, groups, count, starts)
        seconds = time.perf_counter() - start
        same = len(set(removed) & set(gone))
        cells.append(f"{error(weights, fitted, hessians) / base:.4f} ({same}/{count} same, {seconds:.1f} s)")
    print(f"| {name} | {count} of {len(groups)} | {t_obs:.1f} | {cells[0]} | {cells[1]} |", flush=True)


def synthetic(shapes: list[str]) -> None:
    print("\n## synthetic real-shape layers, 30% of the groups removed (error: ADMM's set / group OBS's)\n")
    print("| layers | removed | group OBS (s) | ADMM from group OBS | ADMM from dense |")
    print("|---|---|---|---|---|")
    for spec in shapes:
        parts = spec.split("/")  # ROWSxCOLS/GROUP[xLAYERS]
        rows, cols = (int(v) for v in parts[0].split("x"))
        group_size, *joint = (int(v) for v in parts[1].split("x"))
        layers = [layer(rows, cols, seed) for seed in range(joint[0] if joint else 1)]
        groups = column_groups(cols, group_size)
        compare(
            spec,
            [w for w, _ in layers],
            [h for _, h in layers],
            groups,
            int(0.3 * len(groups)),
            1 if group_size > 1 else 32,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="1280x5120/1,1536x1536/64,1536x1536/64x2")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {threads} threads, torch {torch.__version__}")
    synthetic(args.shapes.split(","))


if __name__ == "__main__":
    main()
