"""The pruning engine: architecture adapters, calibration, module packages, surgery, the loop."""
