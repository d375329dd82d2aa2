"""The maths of OBS-Diff: timestep-weighted Hessians, OBS solvers, baselines, removal counts.

Imports torch only (and the package's dependency-free ``errors``); knows nothing of diffusers."""
