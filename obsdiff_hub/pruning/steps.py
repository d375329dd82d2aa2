"""Which sampling step a denoiser call belongs to, and so which timestep weight α it gets.

α is indexed by sampling step, not by denoiser call: schedulers such as PNDM (a warm-up
call) and Heun or KDPM2 (two calls per step) call the denoiser more often than the
number of steps, and every call of a step shares that step's α (SPEC §1).
"""

from __future__ import annotations

import torch

from ..errors import InputError


def pipeline_step(evaluation: int, num_evaluations: int, num_steps: int, order: int) -> int:
    """The sampling step of denoiser call ``evaluation`` (0-based) in a diffusers sampling loop.

    Counted the way diffusers pipelines count their own progress bar: the first
    ``num_evaluations − num_steps·order`` calls are warm-up calls of step 0 (PNDM's
    repeated first timestep), then every ``order`` calls make one step (Heun: 2).
    """
    warmup = max(num_evaluations - num_steps * order, 0)
    return min(max(evaluation - warmup, 0) // max(order, 1), num_steps - 1)


class StepClock:
    """The step in progress, read by every Hessian hook, and a record of each trajectory.

    A trajectory begins when ``set_step(0)`` follows a later step (or comes first); steps
    may repeat but never go back within a trajectory. :meth:`check` then requires every
    trajectory to have visited all ``num_steps`` steps: a calibration that runs fewer
    steps than the weights cover would silently use a truncated α ramp.
    """

    def __init__(self, alphas: torch.Tensor) -> None:
        self.alphas = [float(a) for a in alphas]
        self.step: int | None = None
        self.visited: list[set[int]] = []

    @property
    def num_steps(self) -> int:
        return len(self.alphas)

    def set_step(self, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self.num_steps:
            raise InputError(
                f"calibration set step {step!r}, but the timestep weights cover steps 0..{self.num_steps - 1}; "
                "set `steps` to the number of sampling steps of each trajectory"
            )
        if step == 0 and self.step != 0:
            self.visited.append(set())
        elif self.step is None or step < self.step:
            raise InputError(
                f"calibration went from step {self.step} to {step}; call set_step(0) to start each trajectory"
            )
        self.step = step
        self.visited[-1].add(step)

    @property
    def alpha(self) -> float:
        if self.step is None:
            raise InputError("the calibration called the model before set_step(0); call set_step(i) before step i")
        return self.alphas[self.step]

    def check(self) -> int:
        """Raise unless every trajectory ran all steps; returns the number of trajectories."""
        if not self.visited:
            raise InputError("the calibration ran no trajectory (set_step was never called)")
        for index, steps in enumerate(self.visited):
            if len(steps) != self.num_steps:
                raise InputError(
                    f"calibration trajectory {index + 1} ran {len(steps)} of the {self.num_steps} sampling steps the "
                    f"timestep weights cover; set `steps` to the number of steps each trajectory runs"
                )
        return len(self.visited)
