"""The maths of OBS-Diff: timestep-weighted Hessians, OBS solvers, refinements, baselines, removal counts.

Imports torch only (and the package's dependency-free ``errors``); knows nothing of diffusers.

Conventions, everywhere in this package:

- ``W`` is ``[rows, cols]`` (outputs × inputs) and ``H`` is the ``cols × cols`` Hessian of
  ``‖W X − Ŵ X‖²``; rows are independent given ``H``.
- A **mask is True where a weight (or group) is pruned**. Selection rules (:mod:`.selection`) return
  such masks; solvers return ``(W_pruned, mask)``.
- Every removal count comes from :mod:`.counts`.
- Solvers compute in ``W``'s dtype promoted to at least fp32 and return ``W``'s dtype.
"""
