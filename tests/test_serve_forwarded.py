"""Proxy headers in ``swv serve`` (swv.serve.proxies): a client's ``X-Forwarded-For`` is ignored
unless ``--forwarded-allow-ips`` trusts its peer address, whatever ``FORWARDED_ALLOW_IPS`` says.
What shows it through the real HTTP path is the refusal throttle, keyed on the client address:
with a burst of one refusal and one refusal per 2 s, a second refusal counted against the same
client is answered about 2 s late, one counted against another client at once. Servers are
`swv serve` subprocesses on 127.0.0.1 with a tiny random-init model."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from swv.core.errors import UsageError  # noqa: E402
from swv.serve.server import ServerOptions, server_config  # noqa: E402

#: One refusal free per client, then one per 2 s: a refusal past the burst waits about 2 s.
THROTTLE = ["--refusals-per-second", "0.5", "--refusal-burst", "1", "--refusal-delay-max", "10"]
LATE = 1.5  # seconds: a refusal answered this late was counted against a client that had used its burst
AT_ONCE = 1.0  # seconds: one answered sooner was not (its own answer takes milliseconds)
SPOOFED = "203.0.113.7"


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("forwarded_model")


def _refused(port: int, forwarded_for: str | None = None) -> float:
    """Seconds until a request for an unknown route (404, a refusal) is answered, sent from
    127.0.0.1 with ``X-Forwarded-For: forwarded_for`` if given."""
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", "/v1/no-such-route", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 404
        return time.perf_counter() - started
    finally:
        conn.close()


def test_a_forwarded_address_is_not_believed_by_default(model_dir: Path, swv_serve) -> None:
    """A local client that names another address in X-Forwarded-For is still 127.0.0.1: its
    refusal is counted against 127.0.0.1's used burst, even with FORWARDED_ALLOW_IPS=* (which
    uvicorn alone would obey) in the server's environment."""
    with swv_serve(model_dir, *THROTTLE, env={"FORWARDED_ALLOW_IPS": "*"}) as (port, proc):
        assert _refused(port) < AT_ONCE  # 127.0.0.1's burst
        assert _refused(port, SPOOFED) >= LATE  # still 127.0.0.1: late
        assert _refused(port, "198.51.100.1") >= LATE  # a fresh fake address does not help either
        proc.terminate()
        log = proc.communicate(timeout=60)[0].decode()
    assert "serve: FORWARDED_ALLOW_IPS is ignored" in log, log


def test_the_forwarded_address_of_a_trusted_proxy_is_used(model_dir: Path, swv_serve) -> None:
    """With 127.0.0.1 trusted as a proxy, the X-Forwarded-For address is the client: it has a
    budget of its own (its first refusal at once although 127.0.0.1 used its burst) and its
    second refusal is counted against it (late), as is one relayed by the proxy for a client that
    sent an X-Forwarded-For of its own (the proxy appends the address it saw; the last untrusted
    one is the client)."""
    with swv_serve(model_dir, *THROTTLE, "--forwarded-allow-ips", "127.0.0.1") as (port, _):
        assert _refused(port) < AT_ONCE  # 127.0.0.1's burst
        assert _refused(port, SPOOFED) < AT_ONCE  # another client: its own burst
        assert _refused(port, SPOOFED) >= LATE  # the same client again: late
        assert _refused(port, f"198.51.100.1, {SPOOFED}") >= LATE


@pytest.mark.parametrize(("value", "problem"), [
    ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"),
    ("proxy.example.org", "'proxy.example.org' is not an IP address or network"),
    ("10.0.0.256", "'10.0.0.256' is not an IP address or network"),
    ("10.0.0.5,unix:/run/nginx.sock", "'unix:/run/nginx.sock' is not an IP address or network"),
])
def test_a_value_uvicorn_would_take_as_a_literal_is_one_error_line(cli, tmp_path: Path, value: str,
                                                                   problem: str) -> None:
    """Refused before the model loads (there is none at the path)."""
    code, _, err = cli(["serve", str(tmp_path / "no-model"), "--forwarded-allow-ips", value])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == [f"error: --forwarded-allow-ips: {problem}; give the proxies' addresses or "
                                   "networks, e.g. 10.0.0.5 or 10.0.0.0/24, or '*' alone"], err


def test_a_star_must_stand_alone(cli, tmp_path: Path) -> None:
    code, _, err = cli(["serve", str(tmp_path / "no-model"), "--forwarded-allow-ips", "10.0.0.5",
                        "--forwarded-allow-ips", "*"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == ["error: --forwarded-allow-ips: '*' trusts every peer and must be given alone, "
                                   "got '10.0.0.5,*'"], err


def test_server_options_check_and_hand_the_proxies_to_uvicorn(monkeypatch) -> None:
    from fastapi import FastAPI

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    config = server_config(FastAPI(), "127.0.0.1", 0, ServerOptions())
    assert config.proxy_headers is False and config.forwarded_allow_ips == []
    options = ServerOptions(forwarded_allow_ips=("10.0.0.5, 10.1.0.0/16", "::1"))
    assert options.forwarded_allow_ips == ("10.0.0.5", "10.1.0.0/16", "::1")
    config = server_config(FastAPI(), "127.0.0.1", 0, options)
    assert config.proxy_headers is True and config.forwarded_allow_ips == ["10.0.0.5", "10.1.0.0/16", "::1"]
    with pytest.raises(UsageError, match=r"^forwarded_allow_ips: 'localhost' is not an IP address or network;"):
        ServerOptions(forwarded_allow_ips=("localhost",))
