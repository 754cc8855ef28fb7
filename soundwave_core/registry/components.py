"""Component registries: ``kind -> name -> ComponentSpec``.

A component is a class plus its own pydantic config model. Specs may point at both with
import strings, so registering and listing never imports torch; the class is imported only
when something is built.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from swv.core.config import BUILDING
from swv.core.errors import ComponentError

#: The kinds every registry starts with: model components, corpus layouts (``swv data manifest
#: --format``) and benchmark presets (``swv eval --preset``).
CORPUS_KIND = "corpus"
EVAL_PRESET_KIND = "eval_preset"
DEFAULT_KINDS: tuple[str, ...] = ("encoder", "adapter", "backbone", CORPUS_KIND, EVAL_PRESET_KIND)

#: Plurals that are not ``kind + "s"`` (for listings and messages).
_PLURALS = {CORPUS_KIND: "corpora"}


def import_object(ref: str | Any) -> Any:
    """Resolve ``"package.module:attr"`` (or return ``ref`` if it is already an object)."""
    if not isinstance(ref, str):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ComponentError(f"invalid import string {ref!r}: expected 'package.module:Name'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ComponentSpec:
    kind: str
    name: str
    target: str | type
    config: str | type[BaseModel]
    description: str = ""
    plugin: str = ""
    distribution: str | None = None
    version: str | None = None
    overrides: str | None = None

    def load_class(self) -> type:
        return import_object(self.target)

    def load_config_model(self) -> type[BaseModel]:
        model = import_object(self.config)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ComponentError(f"{self.kind} {self.name!r}: config {self.config!r} is not a pydantic model")
        return model



@dataclass(frozen=True)
class Component:
    """A registered component chosen by name, with its validated config.

    This is what a recipe's ``{name: ..., **args}`` becomes once validated (by
    :meth:`Registry.resolve`), and what :meth:`Registry.build` instantiates without validating
    again. ``to_dict()`` gives back the ``{name, **args}`` form written to recipes and to
    ``swv_config.json``.
    """

    spec: ComponentSpec
    config: BaseModel

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name

    def has(self, field_name: str) -> bool:
        """Whether this component's config model declares ``field_name``."""
        return field_name in type(self.config).model_fields

    def get(self, field_name: str, default: Any = None) -> Any:
        """A config field's value, or ``default`` when the config model has no such field."""
        return getattr(self.config, field_name) if self.has(field_name) else default

    def replace(self, **changes: Any) -> Component:
        """A copy with some config fields changed, validated by the config model."""
        unknown = [key for key in changes if not self.has(key)]
        if unknown:
            raise ComponentError(f"{self.kind} {self.name!r}: its config has no field {unknown[0]!r}")
        config = type(self.config).model_validate({**self.config.model_dump(), **changes})
        return Component(self.spec, config)

    def to_dict(self) -> dict[str, Any]:
        """``{name, **config}`` with JSON values."""
        return {"name": self.name, **self.config.model_dump(mode="json")}


@dataclass
class _Origin:
    plugin: str = ""
    distribution: str | None = None
    version: str | None = None


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Registry:
    """Maps ``kind -> name -> ComponentSpec`` and builds components from ``{name, **args}``."""

    kinds: list[str] = field(default_factory=lambda: list(DEFAULT_KINDS))
    _specs: dict[str, dict[str, ComponentSpec]] = field(default_factory=dict)
    _plurals: dict[str, str] = field(default_factory=lambda: dict(_PLURALS))
    _origin: _Origin = field(default_factory=_Origin)

    def __post_init__(self) -> None:
        for kind in self.kinds:
            self._specs.setdefault(kind, {})

    # -- registration -------------------------------------------------------------------
    def add_kind(self, kind: str, plural: str | None = None) -> None:
        """Declare a new kind of component (e.g. ``task`` or ``metric``); ``plural`` names it in
        listings when it is not ``kind + "s"``."""
        if kind not in self._specs:
            self.kinds.append(kind)
            self._specs[kind] = {}
        if plural:
            self._plurals[kind] = plural

    def plural(self, kind: str) -> str:
        """``"adapters"``, ``"corpora"``: how listings and messages name several of ``kind``."""
        return self._plurals.get(kind, f"{kind}s")

    def register(
        self,
        kind: str,
        name: str,
        *,
        target: str | type,
        config: str | type[BaseModel],
        description: str = "",
        override: bool = False,
    ) -> ComponentSpec:
        if kind not in self._specs:
            raise ComponentError(f"unknown component kind {kind!r}; known kinds: {', '.join(self.kinds)}")
        if not name or not isinstance(name, str):
            raise ComponentError(f"{kind} name must be a non-empty string, got {name!r}")
        existing = self._specs[kind].get(name)
        if existing is not None and not override:
            raise ComponentError(
                f"duplicate {kind} name {name!r}: already registered by plugin {existing.plugin!r}; "
                "pass override=True to replace it"
            )
        spec = ComponentSpec(
            kind=kind,
            name=name,
            target=target,
            config=config,
            description=description,
            plugin=self._origin.plugin,
            distribution=self._origin.distribution,
            version=self._origin.version,
            overrides=existing.plugin if existing is not None else None,
        )
        self._specs[kind][name] = spec
        return spec

    # -- lookup -----------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self._specs.get(kind, {}))

    def specs(self, kind: str | None = None) -> list[ComponentSpec]:
        kinds = [kind] if kind else self.kinds
        return [self._specs[k][n] for k in kinds for n in sorted(self._specs.get(k, {}))]

    def get(self, kind: str, name: str) -> ComponentSpec:
        if kind not in self._specs:
            raise ComponentError(f"unknown component kind {kind!r}; known kinds: {', '.join(self.kinds)}")
        try:
            return self._specs[kind][name]
        except KeyError:
            known = self.names(kind)
            raise ComponentError(
                f"unknown {kind} {name!r}{suggest(name, known)}; registered {self.plural(kind)}: "
                f"{', '.join(known) if known else '(none)'}"
            ) from None

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._specs.get(kind, {})

    # -- building ---------------------------------------------------------------------------
    def resolve(self, kind: str, ref: Mapping[str, Any] | BaseModel | Component) -> Component:
        """Validate ``{name, **args}`` against the named component's config model (once: a
        :class:`Component` is returned as it is).

        Raises :class:`pydantic.ValidationError` for bad arguments (callers add the location)
        and :class:`ComponentError` for an unknown name or a component of another kind.
        """
        if isinstance(ref, Component):
            if ref.kind != kind:
                article = "an" if kind[:1] in "aeiou" else "a"
                raise ComponentError(f"{article} {kind} was expected, got the {ref.kind} {ref.name!r}")
            return ref
        data = dict(ref.model_dump() if isinstance(ref, BaseModel) else ref)
        name = data.pop("name", None)
        if not isinstance(name, str):
            raise ComponentError(f"{kind} reference needs a 'name' field, got {ref!r}")
        spec = self.get(kind, name)
        return Component(spec, spec.load_config_model().model_validate(data))

    def build(self, kind: str, ref: Mapping[str, Any] | BaseModel | Component, **context: Any) -> Any:
        """Instantiate a component as ``cls(config, **context)`` (``ref`` is resolved first
        unless it is already a :class:`Component`)."""
        component = self.resolve(kind, ref)
        cls = component.spec.load_class()
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise ComponentError(
                f"{kind} {component.spec.name!r}: {cls.__qualname__} does not implement {missing} (see docs/plugins.md)"
            )
        token = BUILDING.set(f"{kind} {component.spec.name!r}")
        try:
            return cls(component.config, **context)
        finally:
            BUILDING.reset(token)

    # -- plugin attribution (used by the plugin manager) --------------------------------------
    def _set_origin(self, plugin: str, distribution: str | None, version: str | None) -> None:
        self._origin = _Origin(plugin, distribution, version)

    def _snapshot(self) -> dict[str, dict[str, ComponentSpec]]:
        return {k: dict(v) for k, v in self._specs.items()}

    def _restore(self, snapshot: dict[str, dict[str, ComponentSpec]]) -> None:
        self._specs = {k: dict(v) for k, v in snapshot.items()}
        for kind in list(self._specs):
            if kind not in self.kinds:
                self.kinds.append(kind)
        self.kinds = [k for k in self.kinds if k in self._specs]
