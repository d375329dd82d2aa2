"""Pruned checkpoints as files: saving with provenance in every header, inspection, and the safe
conversion of the reference project's pickles."""
