"""Healing a pruned model: distillation from the dense model on its sampling trajectories.

The data is recorded once (:mod:`.cache`): the pruned model samples the prompts and the dense
model labels every call with its own prediction. Training (:mod:`.training`) then fits the pruned
model to those labels, masks and shapes untouched, guarded by held-out validation trajectories so
that it never returns a model worse than the one-shot one.
"""
