"""The HTTP integrations' health check: ``GET <origin><path>`` for a breaker's ``health_check`` section.

A breaker section such as::

    breakers:
      payments:
        health_check: {path: /healthz, expect: 2xx}

gives the breaker (when httpx or requests first routes a call to it, and it
has no check of the user's) a check that sends ``GET path`` to the origin of
that call (scheme, host, port), with the client library that made the call,
bounded by the breaker's ``health_check_timeout``, and passes when the status
is in ``expect``. There is no default path: without the section the breaker
probes with user calls as before. The request goes to the client's own
original transport (under our patch and any other wrapper), so it is never
counted as a user call nor refused by the open breaker. The section is
parsed and validated by ``otel_cb.integrations._http_policy``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ..plugin import Call, attach_default_health_check
from ._http_policy import HTTPHealthCheck

if TYPE_CHECKING:
    from .. import CircuitBreaker

__all__ = ["offer_health_check", "check_with_httpx", "check_with_requests"]

Client = Literal["httpx", "requests"]


def offer_health_check(breaker: CircuitBreaker, call: Call, client: Client, spec: HTTPHealthCheck | None) -> None:
    """Give ``breaker`` the check ``spec`` describes (its section's ``health_check``), on ``call``'s
    origin, the first time it is routed to.

    Every protected request passes here: without a spec it returns at once.
    Contained (``attach_default_health_check`` logs a failure once); cheap
    after the first call for each breaker.
    """
    if spec is None:
        return

    def make() -> Callable[[], bool]:
        build = check_with_httpx if client == "httpx" else check_with_requests
        return build(call.target, spec, breaker.config.health_check_timeout)

    attach_default_health_check(breaker, make)


def check_with_httpx(origin: str, spec: HTTPHealthCheck, timeout: float) -> Callable[[], bool]:
    """A check sending ``GET origin+path`` through a fresh ``httpx.HTTPTransport``, unpatched."""
    url = origin + spec.path

    def check() -> bool:
        import httpx

        send: Any = inspect.unwrap(httpx.HTTPTransport.handle_request)
        with httpx.HTTPTransport() as transport:
            request = httpx.Request("GET", url, extensions={"timeout": httpx.Timeout(timeout).as_dict()})
            response = send(transport, request)
            try:
                response.read()
            finally:
                response.close()
        return response.status_code in spec.expect

    return check


def check_with_requests(origin: str, spec: HTTPHealthCheck, timeout: float) -> Callable[[], bool]:
    """A check sending ``GET origin+path`` through a fresh ``requests`` adapter, unpatched."""
    url = origin + spec.path

    def check() -> bool:
        import requests
        import requests.adapters

        send: Any = inspect.unwrap(requests.adapters.HTTPAdapter.send)
        adapter = requests.adapters.HTTPAdapter()
        try:
            response = send(adapter, requests.Request("GET", url).prepare(), timeout=timeout)
            try:
                status = int(response.status_code)
            finally:
                response.close()
        finally:
            adapter.close()
        return status in spec.expect

    return check
