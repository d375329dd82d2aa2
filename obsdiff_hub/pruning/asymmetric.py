"""Asymmetric calibration (``calibration_target: dense``): fit the dense network's outputs.

OBS-Diff calibrates each package on the already-pruned network and fits each layer to its
own output on those drifted inputs, ``‖W X̂ − Ŵ X̂‖``. Here a dense copy of the denoiser runs
on exactly the inputs of every call of the calibrated model, so each hooked layer sees both
its drifted input ``X̂`` and the dense network's ``X``; the cross term ``(X − X̂)ᵀ X̂`` turns
the solve into ``min ‖W X − Ŵ X̂‖`` (see :func:`obsdiff_hub.maths.factor.asymmetric_target`),
in closed form, for every granularity. The dense forward stops as soon as the package's last
layer has been reached, so it costs a fraction of a forward per call.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..maths.hessian import CrossTermAccumulator


class _Reached(Exception):
    """The dense forward has given every input it was asked for."""


@contextmanager
def dense_targets(
    model: nn.Module,
    dense: nn.Module,
    layers: list[str],
    weight: Callable[[], float],
    device: torch.device | None = None,
) -> Iterator[dict[str, CrossTermAccumulator]]:
    """While active, every call of ``model`` first runs ``dense`` on the same arguments (up to the
    last of ``layers``) and each of ``layers`` in ``model`` adds ``2·α·(X − X̂)ᵀX̂``. Yields the
    cross-term accumulators, one per layer, kept on ``device`` (default: each layer's)."""
    crosses = {
        p: CrossTermAccumulator(
            model.get_submodule(p).in_features, device=device or model.get_submodule(p).weight.device
        )
        for p in layers
    }
    pending: dict[str, list[torch.Tensor]] = {p: [] for p in layers}
    wanted = set(layers)

    def run_dense(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen = set()
        with ExitStack() as stack:

            def capture(m: nn.Module, a: tuple, path: str) -> None:
                pending[path].append(a[0].detach())
                seen.add(path)
                if seen >= wanted:
                    raise _Reached

            for path in layers:
                stack.callback(
                    dense.get_submodule(path).register_forward_pre_hook(lambda m, a, p=path: capture(m, a, p)).remove
                )
            try:
                dense(*args, **kwargs)
            except _Reached:
                pass

    def cross(path: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            crosses[path].add(pending[path].pop(0), args[0], weight())

        return hook

    with ExitStack() as stack:
        stack.callback(model.register_forward_pre_hook(run_dense, with_kwargs=True).remove)
        for path in layers:
            stack.callback(model.get_submodule(path).register_forward_pre_hook(cross(path)).remove)
        yield crosses
