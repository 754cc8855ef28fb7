"""Who may use ``swv serve``: the API key, CORS, the Host allow-list and the cross-site checks.

- ``api_key``: every ``/v1/`` route wants ``Authorization: Bearer <key>`` (compared in constant
  time); a wrong or missing key is answered 401 ``invalid_api_key``. ``/health``, ``/metrics`` and
  the web page stay open (the page asks for the key when the server wants one).
- ``allowed_origins``: web origins answered with CORS headers (starlette's CORSMiddleware); none
  by default, so a browser page of another site cannot read the answers.
- DNS rebinding: a server bound to a loopback address answers only requests whose Host header
  names a loopback address (or one of ``allowed_hosts``); others get 400.
- Cross-site requests: a POST whose ``Origin`` is neither the server itself nor an allowed origin
  is refused (403), and so is one without ``Origin`` that the browser marks cross-site or
  same-site (``Sec-Fetch-Site``: another port of the same host is the same site). A POST body
  that is not ``application/json`` (what a form or a ``text/plain`` fetch sends without a
  preflight) is refused (415), but for the ``form_paths`` (the audio API), which take
  ``multipart/form-data`` and nothing else: there a cross-site form is stopped by the origin
  checks (and, with a key, by the key a form cannot send).
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from swv.serve.openai_api import error_body
from swv.serve.settings import ServeSettings

#: The Host names of a loopback server (with or without a port).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether a bind address (``127.0.0.1``, ``::1``, ``localhost``) only listens locally."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def trusted_hosts(settings: ServeSettings) -> list[str] | None:
    """The Host names the server answers (``None``: any)."""
    if is_loopback(settings.bind_host):
        return [*LOOPBACK_HOSTS, *settings.allowed_hosts]
    return list(settings.allowed_hosts) or None


def add_access_controls(app: FastAPI, settings: ServeSettings, form_paths: tuple[str, ...] = ()) -> None:
    """The guard, CORS and Host middleware, innermost first (a CORS preflight needs no key).
    ``form_paths``: the routes whose POST body is ``multipart/form-data`` instead of JSON."""
    app.add_middleware(Guard, api_key=settings.api_key, allowed_origins=settings.allowed_origins,
                       form_paths=form_paths)
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                           expose_headers=["X-Request-Id"])
    hosts = trusted_hosts(settings)
    if hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)


def _refusal(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(error_body(message, code=code), status_code=status)


def _same_origin(origin: str, host: str | None) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and host is not None and parts.netloc.lower() == host.lower()


class Guard:
    """The API key on ``/v1/`` routes, then a POST's origin and content type (see the module)."""

    def __init__(self, app: ASGIApp, api_key: str | None, allowed_origins: tuple[str, ...],
                 form_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.key = None if api_key is None else api_key.encode("ascii")
        self.allowed_origins = set(allowed_origins)
        self.form_paths = frozenset(form_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        if self.key is not None and scope["path"].startswith("/v1/") and not self.authorized(headers):
            return _refusal(401, "a valid API key is required (Authorization: Bearer <key>)", "invalid_api_key")
        if scope["method"] != "POST":
            return None
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins and not _same_origin(origin, headers.get("host")):
            return _refusal(403, f"cross-site requests from {origin[:100]!r} are not allowed", "origin_not_allowed")
        if origin is None and headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
            return _refusal(403, "cross-site requests are not allowed", "origin_not_allowed")
        expected = "multipart/form-data" if scope["path"] in self.form_paths else "application/json"
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != expected:
            return _refusal(415, f"the request body must be sent as Content-Type: {expected}",
                            "unsupported_media_type")
        return None

    def authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.key or b"")
