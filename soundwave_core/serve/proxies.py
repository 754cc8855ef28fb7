"""Which peers may tell ``swv serve`` who the client is: :func:`trusted_proxies`.

A reverse proxy in front of a replica connects from its own address and names the end client
in ``X-Forwarded-For`` (and the scheme in ``X-Forwarded-Proto``). uvicorn's
``ProxyHeadersMiddleware`` replaces the request's client address (``scope["client"]``: what the
refusal throttle of :mod:`swv.serve.throttle` keys on) with the forwarded one when the peer is
among its ``forwarded_allow_ips``. Left to itself uvicorn trusts 127.0.0.1 and ::1, or whatever
the ``FORWARDED_ALLOW_IPS`` environment variable names, so any local client of a loopback-bound
server could claim any address and rotate fake ones past its throttle budget. ``swv serve``
therefore trusts no peer unless ``--forwarded-allow-ips`` names some (the environment variable
is ignored), and then reads proxy headers from those peers only.

uvicorn takes IP addresses, CIDR networks, ``*`` (every peer) and other strings as literals
(compared as text with the peer's address, e.g. a unix socket path). It never fails on a value:
a network with host bits set (``10.0.0.1/8``), a host name or a typo silently becomes a literal
that no TCP peer matches, and ``*`` next to other values is such a literal too. ``swv serve``
listens on TCP only, so its peers always have IP addresses: every value must be an address or a
network (checked with :mod:`ipaddress`, as uvicorn parses them), or ``*`` alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from swv.core.errors import UsageError

__all__ = ["TRUST_ALL", "trusted_proxies"]

#: The value that trusts every peer's proxy headers (uvicorn's ``forwarded_allow_ips="*"``).
TRUST_ALL = "*"


def trusted_proxies(values: str | Iterable[str], name: str = "forwarded_allow_ips") -> tuple[str, ...]:
    """``values`` (a string or strings, each possibly comma-separated, blanks ignored) as
    uvicorn's ``forwarded_allow_ips``; a value uvicorn would take as a literal no TCP peer matches
    is a :class:`UsageError` naming ``name`` (the option or field it came from)."""
    if isinstance(values, str):
        values = (values,)
    items = tuple(item.strip() for value in values for item in value.split(",") if item.strip())
    if TRUST_ALL in items:
        if len(items) > 1:
            raise UsageError(f"{name}: '*' trusts every peer and must be given alone, got {','.join(items)!r}")
        return items
    for item in items:
        problem = _not_an_address(item)
        if problem:
            raise UsageError(f"{name}: {problem}; give the proxies' addresses or networks, e.g. 10.0.0.5 or "
                             f"10.0.0.0/24, or '*' alone")
    return items


def _not_an_address(item: str) -> str | None:
    """Why uvicorn would take ``item`` as a literal (None: it is an address or a network)."""
    try:
        if "/" in item:
            ipaddress.ip_network(item)
        else:
            ipaddress.ip_address(item)
        return None
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(item, strict=False)
    except ValueError:
        return f"{item!r} is not an IP address or network"
    return f"{item!r} has host bits set (the network is {network})"
