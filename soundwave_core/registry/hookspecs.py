"""pluggy hook specifications.

A plugin is a module with functions marked ``@swv.hookimpl``. Built-in components are
registered by :mod:`swv.plugins.builtin` through these same hooks; third-party packages
expose their module under the ``swv.plugins`` entry-point group::

    [project.entry-points."swv.plugins"]
    my-adapters = "my_package.swv_plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from swv.registry.components import Registry

PROJECT_NAME = "swv"
ENTRY_POINT_GROUP = "swv.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def swv_register_components(registry: Registry) -> None:
    """Register components with ``registry.register(kind, name, target=..., config=...)``.

    ``target`` and ``config`` may be import strings (``"pkg.module:Class"``) so that listing
    components never imports heavy modules. Register under a name that already exists only
    with ``override=True``; otherwise the plugin is reported as broken.
    """
