"""The pruning engine: run settings (``config``), calibration trajectories and prompts, module
packages, the dtype policy, Hessian hooks, the method registry, unit solves, sparsity allocation,
asymmetric targets, many processes, the report, the loop (``engine``) and offline plans (``plan``)."""
