"""The maths of OBS-Diff: timestep-weighted Hessians, OBS solvers, baselines. Imports torch only."""
