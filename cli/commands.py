"""The Typer app and command classes every ``swv`` command uses, for one help style: a flag
shows no value placeholder (Typer's rich help would print ``<bool>``), and a positional
argument's placeholder is an upper-case name (its ``metavar``, else its parameter name)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def plain_placeholders(params: Iterable[Any]) -> None:
    """Give each flag an empty placeholder and each argument an upper-case one."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # a flag takes no value
        elif isinstance(param, TyperArgument):
            param.metavar = (param.metavar or param.name or "").upper() or None


class _PlainPlaceholders:
    """Click command/group mixin: no ``<bool>`` metavars, upper-case argument placeholders."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_placeholders(self.params)

    def get_help_option(self, ctx: Any) -> TyperOption | None:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        plain_placeholders([option])
        return option


class SwvCommand(_PlainPlaceholders, TyperCommand):
    pass


class SwvGroup(_PlainPlaceholders, TyperGroup):
    pass


class SwvTyper(typer.Typer):
    """A ``typer.Typer`` whose group and commands are :class:`SwvGroup` and :class:`SwvCommand`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=SwvGroup, **kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        kwargs.setdefault("cls", SwvCommand)
        return super().command(name, **kwargs)
