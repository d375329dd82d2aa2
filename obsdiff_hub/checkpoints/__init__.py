"""Checkpoints: safetensors saving with provenance, loading diagnostics, the sha256 manifest,
safe legacy conversion, offline plans and inspection. Output folders are this tool's alone."""
