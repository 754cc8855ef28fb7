"""Option groups (swv.cli.options.with_option_groups): a dataclass of options taken as one parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

from swv.cli.options import with_option_groups


@dataclass(frozen=True)
class Speed:
    fast: Annotated[bool, typer.Option("--fast", help="Go fast.")] = False
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Most items.")] = None


received: list[tuple[str, Speed, str]] = []


@with_option_groups
def command(
    name: Annotated[str, typer.Argument(help="A name.")],
    *,
    speed: Speed,
    colour: Annotated[str, typer.Option("--colour", help="A colour.")] = "red",
) -> None:
    """Record what the command was given."""
    received.append((name, speed, colour))


def _run(args: list[str]) -> typer.testing.Result:
    app = typer.Typer(add_completion=False)
    app.command()(command)
    app.command("noop")(lambda: None)
    return CliRunner().invoke(app, args)


def test_the_group_is_built_from_its_options_on_the_command_line() -> None:
    received.clear()
    assert _run(["command", "x", "--limit", "3", "--fast"]).exit_code == 0
    assert _run(["command", "y", "--colour", "blue"]).exit_code == 0
    assert received == [("x", Speed(fast=True, limit=3), "red"), ("y", Speed(), "blue")]
    bad = _run(["command", "z", "--limit", "0"])
    assert bad.exit_code == 2 and "--limit" in bad.output


def test_help_lists_the_group_options_in_the_group_parameter_s_place() -> None:
    out = _run(["command", "--help"]).output
    assert out.index("--fast") < out.index("--limit") < out.index("--colour")
    assert "Most items." in out and "Record what the command was given." in out


def test_direct_calls_take_the_options_by_name_and_groups_must_be_keyword_only() -> None:
    received.clear()
    command("x", limit=2)
    assert received == [("x", Speed(limit=2), "red")]

    def positional(speed: Speed) -> None:
        """Takes a group positionally."""

    with pytest.raises(TypeError, match="keyword-only"):
        with_option_groups(positional)
