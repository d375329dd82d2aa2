"""The one reader of JSON from outside: bounded in size and nesting, a one-line error otherwise.

Configs, ``model_index.json``, manifests, ownership markers, Hessian store headers, prompt files and
a checkpoint's records all come from strangers. Python's parser recurses once per nesting level, so
200 KB of ``[`` is a ``RecursionError`` deep inside it; no file this tool reads nests more than a
dozen levels, so anything past :data:`MAX_DEPTH` is refused by name.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


def depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def loads(text: str | bytes) -> Any:
    """``json.loads``, refusing anything nested deeper than :data:`MAX_DEPTH` with a ``ValueError``, as malformed
    JSON is (``json.JSONDecodeError``): callers turn either into their one-line error."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if depth(data) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return data
