"""Where calibration inputs become Hessians: forward pre-hooks on the layers of a package.

Each hooked call adds ``2·α·XᵀX`` to its layer's :class:`~obsdiff_hub.maths.hessian.HessianAccumulator`,
with ``α`` the timestep weight of the sampling step in progress (read from the step clock at
the moment of the call). Layers that read the same input share one accumulator: the engine
hooks only the first layer of each shared input (:func:`obsdiff_hub.pruning.packages.hessian_layers`).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..maths.hessian import AccumulationPrecision, HessianAccumulator


@contextmanager
def collect_hessians(
    model: nn.Module,
    layers: list[str],
    weight: Callable[[], float],
    precision: AccumulationPrecision = "fp32",
    timer: list[float] | None = None,
    device: torch.device | None = None,
) -> Iterator[dict[str, HessianAccumulator]]:
    """Hook the inputs of ``layers``; every call adds ``2·α·XᵀX`` with ``α = weight()``.

    Yields the accumulators, kept on ``device`` (default: each layer's); the hooks are removed
    on exit. ``timer[0]`` (if given) accumulates the seconds spent inside the hooks.
    """
    accumulators: dict[str, HessianAccumulator] = {}
    with ExitStack() as stack:
        for path in layers:
            linear = model.get_submodule(path)
            acc = HessianAccumulator(linear.in_features, device=device or linear.weight.device, precision=precision)
            accumulators[path] = acc

            def hook(module: nn.Module, args: tuple, acc: HessianAccumulator = acc) -> None:
                start = time.perf_counter()
                acc.add(args[0], weight())
                if timer is not None:
                    timer[0] += time.perf_counter() - start

            stack.callback(linear.register_forward_pre_hook(hook).remove)
        yield accumulators
