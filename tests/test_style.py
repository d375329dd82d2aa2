"""The code's form, enforced: ruff's formatter and linter (configured in pyproject.toml, diffusers' settings),
and functions a reader can hold."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LONGEST_FUNCTION = 80  # lines, signature and docstring included


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


# The project's own files; the root also holds what a user writes there (the README's main job writes
# `tiny-out/`, whose card is generated, not ours to format).
PROJECT = ("obsdiff_hub", "tests", "benchmarks", "cli", "model_cards", "recipes", "README.md", "BENCHMARKS.md")


def test_the_tree_is_formatted_and_lint_free():
    formatted = ruff("format", "--check", *PROJECT)
    assert formatted.returncode == 0, f"run `ruff format .`:\n{formatted.stdout}{formatted.stderr}"
    linted = ruff("check", *PROJECT)
    assert linted.returncode == 0, f"run `ruff check .`:\n{linted.stdout}{linted.stderr}"


def test_no_function_in_the_package_is_longer_than_a_reader_can_hold():
    long = []
    for path in sorted((ROOT / "obsdiff_hub").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
