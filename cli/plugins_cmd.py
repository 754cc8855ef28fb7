"""``swv plugins``: what is installed and registered."""

from __future__ import annotations

import typer

from swv.cli.commands import SwvTyper

app = SwvTyper(help="Inspect plugins and the components they register.", no_args_is_help=True)


@app.command("list")
def list_plugins() -> None:
    """List plugins (with distribution and version) and every registered component."""
    from swv.registry.plugins import autoload_disabled, default_plugins

    plugins = default_plugins()
    typer.echo("plugins:")
    for p in plugins.plugins:
        dist = f"{p.distribution} {p.version or ''}".strip() if p.distribution else "(not from a distribution)"
        line = f"  {p.name:<20} {dist:<28} {p.status}"
        if p.error:
            line += f": {p.error}"
        typer.echo(line)
    if autoload_disabled():
        typer.echo("  (third-party discovery disabled by SWV_DISABLE_PLUGIN_AUTOLOAD)")
    registry = plugins.registry
    width = max([16, *(len(spec.name) for spec in registry.specs())])
    for kind in registry.kinds:
        typer.echo(f"{registry.plural(kind)}:")
        specs = registry.specs(kind)
        if not specs:
            typer.echo("  (none)")
        for spec in specs:
            extra = f" (overrides {spec.overrides})" if spec.overrides else ""
            typer.echo(f"  {spec.name:<{width}} [{spec.plugin}]{extra} {spec.description}")
