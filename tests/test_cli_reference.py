"""cli/README.md is the command reference as the command itself describes it."""

from pathlib import Path

from obsdiff_hub.cli.reference import reference

ROOT = Path(__file__).resolve().parent.parent


def test_the_checked_in_reference_is_current():
    assert (ROOT / "cli" / "README.md").read_text() == reference(), (
        "regenerate: python -m obsdiff_hub.cli.reference > cli/README.md"
    )


def test_every_command_is_in_the_reference():
    text = reference()
    for command in (
        "prune",
        "recover",
        "eval",
        "bench",
        "plan",
        "inspect",
        "generate",
        "convert-legacy",
        "push",
        "pull",
        "card",
        "recipes list",
        "recipes show",
    ):
        assert f"## `obsdiff-hub {command}`" in text, command
