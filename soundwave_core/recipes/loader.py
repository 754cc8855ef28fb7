"""Finding, composing, overriding and validating recipes.

Composition rules:
- ``extends: other.yaml`` (a path relative to the extending file, or a shipped recipe name)
  loads the base first; the extending file is merged on top: **mappings merge key by key,
  lists and scalars replace**. Chains are allowed; cycles are errors.
- ``key.path=value`` overrides from the command line are applied after ``extends`` and before
  validation. Values are parsed as YAML (``3e-5``, ``true``, ``[a, b]``). List items are
  addressed by index (``stages.0.max_steps=10``) or, in a list of named mappings (stages,
  adapters), by name (``stages.alignment.max_steps=10``). A misspelt key fails validation,
  naming the override that introduced it.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from swv.assets import ASSET_PREFIX
from swv.core.errors import ComponentError, RecipeError
from swv.core.validation import describe_error, format_loc
from swv.recipes.schema import ComponentRef, Recipe
from swv.registry.components import Component

if TYPE_CHECKING:
    from swv.registry.components import Registry


def shipped_recipe_dir() -> Path:
    return Path(str(resources.files("swv.recipes")))


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped with swv, by name (file stem)."""
    return {p.stem: p for p in sorted(shipped_recipe_dir().glob("*.yaml"))}


def recipe_label(path: str | os.PathLike[str]) -> str:
    """How messages name a recipe file: ``recipe NAME`` for a shipped recipe (never the path of
    the installed package, which means nothing to a user), else the path as given."""
    path = Path(path)
    for name, shipped in shipped_recipes().items():
        try:
            if path == shipped or path.resolve() == shipped.resolve():
                return f"recipe {name}"
        except (OSError, RuntimeError):  # an unresolvable path is not a shipped recipe
            continue
    return str(path)


def resolve_recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A file path, or the name of a shipped recipe."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    stem = text[:-5] if text.endswith(".yaml") else text
    if stem in shipped and os.sep not in text:
        return shipped[stem]
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if path.exists():  # a directory, FIFO or device: say which
            from swv.core.io import regular_file

            regular_file(path, "recipe")
        raise RecipeError(f"{text}: recipe file not found")
    close = difflib.get_close_matches(stem, list(shipped), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RecipeError(f"{text}: no such recipe file or shipped recipe{hint}; shipped: {', '.join(shipped)}")


#: Most nodes (mappings, lists, scalars) a recipe may expand to once YAML aliases are
#: followed; real recipes have a few hundred. Guards against alias bombs ("billion laughs").
MAX_RECIPE_NODES = 100_000


def expanded_size(data: Any, where: str, budget: int = MAX_RECIPE_NODES) -> int:
    """Number of nodes of ``data`` with every shared (aliased) node counted each time it is
    used, computed without expanding anything; a :class:`RecipeError` naming ``where`` if it
    exceeds ``budget`` or an alias refers to itself."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(data, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        key = id(node)
        children = [v for kv in node.items() for v in kv] if isinstance(node, dict) else node
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[key] > budget:
                raise RecipeError(
                    f"{where}: YAML aliases expand to more than {budget} nodes; refusing to load (an alias bomb?)"
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise RecipeError(f"{where}: a YAML alias refers to the mapping or list that contains it")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)) and id(c) not in sizes)
    return sizes.get(id(data), 1)


def _load_yaml(path: Path) -> dict[str, Any]:
    from swv.core.io import open_regular

    label = recipe_label(path)
    try:
        with open_regular(path, "recipe") as fh:  # a FIFO or device is refused, not read forever
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise RecipeError(f"{label}: cannot read recipe ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{label}: not UTF-8 text (invalid byte at offset {exc.start}); save the recipe as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{label}{where}: invalid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{label}: a recipe must be a YAML mapping, got {type(data).__name__}")
    expanded_size(data, label)
    return data


def merge(base: Any, over: Any) -> Any:
    """Mappings merge recursively; anything else (lists, scalars) in ``over`` replaces ``base``."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def compose(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load ``path`` and everything it ``extends``."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(recipe_label(p) for p in (*_chain, path))
        raise RecipeError(f"{recipe_label(path)}: 'extends' cycle: {cycle}")
    data = _load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"{recipe_label(path)}: extends: expected a recipe path or name, got {parent!r}")
    candidate = (path.parent / parent).expanduser()
    base_path = candidate if candidate.is_file() else resolve_recipe_path(parent)
    return merge(compose(base_path, (*_chain, path)), data)


@dataclass
class Override:
    text: str
    keys: list[str]
    value: Any


def parse_override(text: str) -> Override:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not k for k in key.split(".")):
        raise RecipeError(f"override {text!r}: expected key.path=value (e.g. stages.0.max_steps=10)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    expanded_size(value, f"override {text!r}")
    return Override(text, key.split("."), value)


def list_index(items: list[Any], key: str, ov: Override, where: str) -> int:
    """The index ``key`` names in ``items``: a number, or the ``name`` of one of its mappings."""
    if key.lstrip("-").isdigit():
        return int(key)
    names = [item.get("name") for item in items if isinstance(item, dict)]
    if not names or any(not isinstance(n, str) for n in names):
        raise RecipeError(f"override {ov.text!r}: {where}: expected a list index, got {key!r}")
    found = [i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == key]
    if len(found) != 1:
        problem = "no item" if not found else f"{len(found)} items"
        raise RecipeError(f"override {ov.text!r}: {where}: {problem} named {key!r}; use an index (0-{len(items) - 1}) "
                          f"or one of the names: {', '.join(names)}")
    return found[0]


def apply_override(data: dict[str, Any], ov: Override) -> None:
    """Set the value of ``ov`` in ``data``; list items named by name get their index in ``ov.keys``
    (so that validation errors name the override)."""
    node: Any = data
    for depth, key in enumerate(ov.keys):
        last = depth == len(ov.keys) - 1
        where = ".".join(ov.keys[: depth + 1])
        if isinstance(node, list):
            idx = list_index(node, key, ov, ".".join(ov.keys[:depth]))
            ov.keys[depth] = str(idx)
            if not -len(node) <= idx < len(node):
                raise RecipeError(f"override {ov.text!r}: {where}: index {idx} out of range (list has {len(node)} items)")
            if last:
                node[idx] = ov.value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = ov.value
            else:
                if key not in node or node[key] is None:
                    node[key] = {}
                node = node[key]
        else:
            parent = ".".join(ov.keys[:depth]) or "(top level)"
            raise RecipeError(f"override {ov.text!r}: {parent} holds a {type(node).__name__}, not a mapping or list")


@dataclass(frozen=True)
class ModelComponents:
    """The recipe's model, each component validated against its config model."""

    encoder: Component
    adapters: tuple[Component, ...]
    backbone: Component


@dataclass
class LoadedRecipe:
    recipe: Recipe
    source: Path
    raw: dict[str, Any]
    #: set by :func:`validate_components` (``load_recipe`` with a registry)
    components: ModelComponents | None = None

    @property
    def label(self) -> str:
        """How messages name the recipe: ``recipe NAME`` when shipped, else its path."""
        return recipe_label(self.source)

    @property
    def model_components(self) -> ModelComponents:
        if self.components is None:
            raise RecipeError(f"{self.label}: the recipe's components were not validated (load it with a registry)")
        return self.components

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe: defaults filled in, components with their full configs."""
        data = self.recipe.model_dump(mode="json")
        if self.components is not None:
            model = data["model"]
            model["encoder"] = self.components.encoder.to_dict()
            model["adapters"] = [adapter.to_dict() for adapter in self.components.adapters]
            model["backbone"] = self.components.backbone.to_dict()
        return data


def _error_from_validation(source: Path, exc: ValidationError, prefix: tuple[Any, ...], overrides: list[Override]) -> RecipeError:
    errors = exc.errors()
    first = errors[0]
    loc = (*prefix, *first.get("loc", ()))
    dotted = format_loc(loc)
    msg = describe_error(first)
    origin = ""
    flat = ".".join(str(p) for p in loc)
    for ov in overrides:
        key = ".".join(ov.keys)
        if key == flat or flat.startswith(key + ".") or key.startswith(flat + "."):
            origin = f" (from override {ov.text!r})"
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return RecipeError(f"{recipe_label(source)}: {dotted}: {msg}{origin}{more}")


def validate_components(loaded: LoadedRecipe, registry: Registry, overrides: list[Override] | None = None) -> None:
    """Check every component reference against the registry and its config model."""
    model = loaded.recipe.model
    check = (loaded.source, registry, overrides or [])
    loaded.components = ModelComponents(
        encoder=_resolve_ref(*check, "encoder", model.encoder, ("encoder",)),
        adapters=tuple(_resolve_ref(*check, "adapter", ref, ("adapters", i)) for i, ref in enumerate(model.adapters)),
        backbone=_resolve_ref(*check, "backbone", model.backbone, ("backbone",)),
    )


def _resolve_ref(
    source: Path, registry: Registry, overrides: list[Override], kind: str, ref: ComponentRef, loc: tuple[Any, ...]
) -> Component:
    """One validated component; errors name the recipe field (``model.adapters[0].factor``)."""
    where = format_loc(("model", *loc))
    try:
        component = registry.resolve(kind, {"name": ref.name, **ref.args()})
    except ComponentError as exc:
        raise RecipeError(f"{recipe_label(source)}: {where}.name: {exc}") from None
    except ValidationError as exc:
        raise _error_from_validation(source, exc, ("model", *loc), overrides) from None
    return _resolve_assets(component, f"{recipe_label(source)}: {where}")




def _resolve_assets(component: Component, where: str) -> Component:
    """String fields written ``asset:NAME`` name files shipped with swv (e.g. the tiny tokenizer)."""
    updates = {}
    for field_name, value in component.config:
        if isinstance(value, str) and value.startswith(ASSET_PREFIX):
            from swv.assets import asset_path

            try:
                updates[field_name] = str(asset_path(value[len(ASSET_PREFIX) :]))
            except (FileNotFoundError, ValueError) as exc:
                raise RecipeError(f"{where}.{field_name}: {exc}") from None
    return component.replace(**updates) if updates else component


def load_recipe(
    name_or_path: str | os.PathLike[str],
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> LoadedRecipe:
    """Compose, override and validate a recipe; with ``registry`` also its component args."""
    source = resolve_recipe_path(name_or_path)
    raw = compose(source)
    parsed = [parse_override(o) for o in overrides or []]
    for ov in parsed:
        apply_override(raw, ov)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise _error_from_validation(source, exc, (), parsed) from None
    loaded = LoadedRecipe(recipe=recipe, source=source, raw=raw)
    if registry is not None:
        validate_components(loaded, registry, parsed)
    return loaded
