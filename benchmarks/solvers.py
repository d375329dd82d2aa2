"""Time the OBS solvers on real layer shapes against their FLOP floor.

Shapes: SD3.5-Large (hidden 2432, FFN 9728) and SDXL (1280, FFN 5120). The floor is the
solver's dominant FLOPs (Cholesky n³/3 + triangular inverse n³/3 + lazy updates rows·n²
for blocked OBS; for group removal the O(n²) downdate + O(rows·n) weight update per
group) divided by this device's measured fp32 GEMM rate. Run:

    python benchmarks/solvers.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from obsdiff_hub.solvers import obs_prune, obs_prune_columns

SHAPES = {
    "sd35-large": {"hidden": 2432, "ffn": 9728, "head_dim": 64},
    "sdxl": {"hidden": 1280, "ffn": 5120, "head_dim": 64},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(device: torch.device, n: int = 2048) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    sync(device)
    return 5 * 2 * n**3 / (time.perf_counter() - start)


def problem(rows: int, cols: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    X = torch.randn(cols, 2 * cols, generator=g).to(device)
    X = X + 0.5 * X.roll(1, 0)  # correlated inputs
    H = 2 * X @ X.T / X.shape[1]
    W = torch.randn(rows, cols, generator=g).to(device)
    return W, H


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="SDXL shapes only")
    args = parser.parse_args()
    device = torch.device(args.device)
    rate = gemm_rate(device)
    print(f"# device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, fp32 GEMM {rate / 1e9:.1f} GFLOP/s")
    rows_out = []
    for model, s in SHAPES.items():
        if args.quick and model != "sdxl":
            continue
        d, f, hd = s["hidden"], s["ffn"], s["head_dim"]
        for name, rows, cols in [("attn q/k/v", d, d), ("ffn out (net.2)", d, f)]:
            W, H = problem(rows, cols, device)
            for label, kw in [("unstructured 50%", dict(sparsity=0.5)), ("2:4", dict(sparsity=0.0, n=2, m=4))]:
                seconds = timed(lambda: obs_prune(W, H, **kw), device)
                flops = 2 * cols**3 / 3 + 2 * rows * cols**2 / 2
                rows_out.append(dict(model=model, layer=name, shape=[rows, cols], solver=f"obs_prune {label}", seconds=seconds, floor_s=flops / rate))
        W, H = problem(d, d, device)
        heads = round(0.3 * d // hd)
        seconds = timed(lambda: obs_prune_columns(W, H, heads, group_size=hd), device)
        flops = 2 * d**3 / 3 * 2 + heads * (2 * d * d * hd + 2 * d * d * hd)
        rows_out.append(dict(model=model, layer="attn to_out.0", shape=[d, d], solver=f"obs_prune_columns {heads} heads of {hd}", seconds=seconds, floor_s=flops / rate))
        W, H = problem(d, f, device)
        neurons = round(0.3 * f)
        floor = (2 * f**3 / 3 * 2 + neurons * (2 * f * f + 4 * d * f)) / rate
        for batch in (32, 1):
            # batch 1 on a CPU takes minutes per layer: time 200 removals and scale
            measured = neurons if (batch > 1 or device.type == "cuda") else 200
            seconds = timed(lambda: obs_prune_columns(W, H, measured, batch=batch), device)
            note = "" if measured == neurons else f", timed {measured} removals ×{neurons / measured:.1f}"
            rows_out.append(dict(model=model, layer="ffn out (net.2)", shape=[d, f], solver=f"obs_prune_columns {neurons} neurons (batch {batch}{note})",
                                 seconds=seconds * neurons / measured, floor_s=floor))
    print("| model | layer | shape | solver | time (s) | FLOP floor (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['model']} | {r['layer']} | {r['shape'][0]}×{r['shape'][1]} | {r['solver']} | {r['seconds']:.2f} | {r['floor_s']:.2f} | {r['seconds'] / r['floor_s']:.1f}× |")
    print(json.dumps({"device": str(device), "gemm_flops": rate, "rows": rows_out}))


if __name__ == "__main__":
    main()
