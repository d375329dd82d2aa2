"""obsdiff-hub: OBS-Diff pruning of diffusion models, published as real diffusers checkpoints."""

__version__ = "0.1.0"
