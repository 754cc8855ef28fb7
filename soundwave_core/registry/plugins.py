"""Plugin discovery with pluggy.

Built-ins (:mod:`swv.plugins.builtin`) load first through the same hook third-party plugins
use. Each third-party entry point is then imported and asked to register on its own: an
import error, an exception in its hook or a duplicate name marks that one plugin as broken
(its partial registrations are rolled back), is reported with a warning, and does not stop
the others. ``SWV_DISABLE_PLUGIN_AUTOLOAD=1`` skips third-party discovery.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass
from types import ModuleType

import pluggy

import swv.registry.hookspecs as hookspecs
from swv.registry.components import Registry

BUILTIN_PLUGIN = "swv.plugins.builtin"
AUTOLOAD_ENV = "SWV_DISABLE_PLUGIN_AUTOLOAD"


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded; the rest of swv still works."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    status: str  # "ok" or "broken"
    error: str | None = None
    builtin: bool = False


@dataclass
class PluginSet:
    registry: Registry
    plugins: list[PluginInfo]

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status != "ok"]


def autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _own_version() -> str | None:
    try:
        return md.version("swv")
    except md.PackageNotFoundError:
        return None


def _register_one(
    pm: pluggy.PluginManager,
    registry: Registry,
    plugin: object,
    info: PluginInfo,
) -> PluginInfo:
    """Register ``plugin`` with pluggy and let it fill ``registry``; roll back on failure."""
    snapshot = registry._snapshot()
    try:
        pm.register(plugin, name=info.name)
    except Exception as exc:  # e.g. a hookimpl with an unknown signature
        return _broken(info, exc)
    others = [p for p in pm.get_plugins() if p is not plugin]
    registry._set_origin(info.name, info.distribution, info.version)
    try:
        pm.subset_hook_caller("swv_register_components", remove_plugins=others)(registry=registry)
    except Exception as exc:
        registry._restore(snapshot)
        pm.unregister(plugin)
        return _broken(info, exc)
    finally:
        registry._set_origin("", None, None)
    return info


def _broken(info: PluginInfo, exc: BaseException) -> PluginInfo:
    msg = _describe(exc)
    dist = f" from {info.distribution} {info.version}" if info.distribution else ""
    warnings.warn(f"plugin {info.name!r}{dist} is broken and was skipped: {msg}", PluginWarning, stacklevel=3)
    return PluginInfo(info.name, info.module, info.distribution, info.version, "broken", msg, info.builtin)


def load_plugins(autoload: bool | None = None, extra: list[ModuleType | object] | None = None) -> PluginSet:
    """Build a fresh registry: built-ins, then installed entry points, then ``extra`` objects."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    infos: list[PluginInfo] = []

    builtin = importlib.import_module(BUILTIN_PLUGIN)
    infos.append(
        _register_one(
            pm,
            registry,
            builtin,
            PluginInfo("swv", BUILTIN_PLUGIN, "swv", _own_version(), "ok", builtin=True),
        )
    )

    if autoload is None:
        autoload = not autoload_disabled()
    if autoload:
        eps = sorted(md.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            dist = ep.dist.metadata["Name"] if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            info = PluginInfo(ep.name, ep.value, dist, version, "ok")
            if ep.value == BUILTIN_PLUGIN:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a plugin may raise anything on import
                infos.append(_broken(info, exc))
                continue
            infos.append(_register_one(pm, registry, module, info))

    for i, obj in enumerate(extra or []):
        name = getattr(obj, "__name__", f"extra-{i}")
        infos.append(_register_one(pm, registry, obj, PluginInfo(name, name, None, None, "ok")))
    return PluginSet(registry, infos)


@functools.lru_cache(maxsize=1)
def _default_plugins() -> PluginSet:
    return load_plugins()


def default_plugins() -> PluginSet:
    """The process-wide plugin set (built once, on first use)."""
    return _default_plugins()


def default_registry() -> Registry:
    return default_plugins().registry
