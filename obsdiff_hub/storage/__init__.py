"""Checkpoint files, read and written safely: JSON and safetensors headers, owned output folders
written atomically, sha256 manifests, and one-line explanations of failed loads. Knows no model
class and makes no network request."""
