"""The dtypes a run, a checkpoint or a command can name, in one place (no torch: the command line reads it)."""

from typing import Literal, get_args

DtypeName = Literal["float32", "float16", "bfloat16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)
