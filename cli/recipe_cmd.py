"""``swv recipe``: list, show, copy, validate and plan recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swv.cli.commands import SwvTyper

app = SwvTyper(help="List, show, copy, validate and plan training recipes.", no_args_is_help=True)


@app.command("ls")
def ls() -> None:
    """List the recipes shipped with swv."""
    import yaml

    from swv.recipes.loader import shipped_recipes

    for name, path in shipped_recipes().items():
        try:
            desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except Exception:  # a broken shipped recipe still gets listed
            desc = "(unreadable)"
        typer.echo(f"{name:<18} {str(desc).strip().splitlines()[0] if desc else ''}")


@app.command("show")
def show(
    recipe: Annotated[str, typer.Argument(metavar="RECIPE", help="Shipped recipe name or path to a YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        metavar="OVERRIDES", help="key.path=value overrides (list items by index or name: stages.alignment.max_steps=10).")] = None,
) -> None:
    """Print the fully resolved recipe (extends, overrides and every default filled in)."""
    import yaml

    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry

    loaded = load_recipe(recipe, overrides or [], default_registry())
    typer.echo(f"# resolved from {loaded.label}")
    typer.echo(yaml.safe_dump(loaded.resolved(), sort_keys=False, allow_unicode=True).rstrip())


@app.command("plan")
def plan(
    recipe: Annotated[str, typer.Argument(metavar="RECIPE", help="Shipped recipe name or path to a YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(metavar="OVERRIDES", help="key.path=value overrides.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Per stage, without loading weights (the model built on the meta device from its configs):
    trainable and frozen parameters by module, rows per optimizer step, optimizer steps, epochs
    of each data source, the mixture at the start and the end, text tokens and audio hours seen,
    and the per-GPU memory of weights, gradients and AdamW states."""
    import json

    from swv.registry.plugins import default_registry
    from swv.train.plan import format_plan, plan_recipe

    result = plan_recipe(recipe, overrides or [], default_registry())
    typer.echo(json.dumps(result, indent=2) if as_json else format_plan(result))


@app.command("cp")
def cp(
    name: Annotated[str, typer.Argument(metavar="RECIPE", help="Shipped recipe name.")],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="Destination file or directory.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Copy a shipped recipe to edit it."""
    from swv.core.errors import UsageError
    from swv.core.io import atomic_write_text
    from swv.recipes.loader import shipped_recipes

    shipped = shipped_recipes()
    if name not in shipped:
        from swv.registry.components import suggest

        raise UsageError(f"no shipped recipe {name!r}{suggest(name, shipped)}; shipped: {', '.join(shipped)}")
    target = dest / f"{name}.yaml" if dest.is_dir() else dest
    if target.exists() and not force:
        raise UsageError(f"{target}: already exists (use --force to overwrite)")
    atomic_write_text(target, shipped[name].read_text(encoding="utf-8"))
    typer.echo(f"copied {name} -> {target}")


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Recipes and ``key.path=value`` overrides from one list of arguments: an item holding ``=``
    that is not an existing file is an override."""
    recipes = [item for item in items if "=" not in item or Path(item).is_file()]
    return recipes, [item for item in items if item not in recipes]


@app.command("validate")
def validate(
    items: Annotated[list[str], typer.Argument(
        metavar="RECIPE|KEY=VALUE", help="Shipped recipe names or YAML paths, and key.path=value overrides "
        "applied to each (e.g. stages.alignment.max_steps=10).")],
) -> None:
    """Validate recipes, including every component's arguments. Exits 2 if any is invalid."""
    from swv.core.errors import RecipeError, UsageError
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.stages import recipe_stages
    from swv.train.tracking import check_trackers

    recipes, overrides = split_overrides(items)
    if not recipes:
        raise UsageError("recipe validate: name at least one recipe (shipped name or YAML path) besides the overrides")
    registry = default_registry()
    failed = 0
    for item in recipes:
        try:
            loaded = load_recipe(item, overrides, registry)
        except RecipeError as exc:
            failed += 1
            typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
            continue
        try:
            recipe_stages(loaded, registry)
            check_trackers(list(loaded.recipe.trackers), installed_only=False)  # installed or not: the training machine's business
        except UsageError as exc:
            failed += 1
            typer.echo(f"error: {loaded.label}: {exc}", err=True)
            continue
        stages = ", ".join(s.name for s in loaded.recipe.stages)
        typer.echo(f"ok: {loaded.label} ({len(loaded.recipe.stages)} stages: {stages})")
    if failed:
        raise typer.Exit(2)
