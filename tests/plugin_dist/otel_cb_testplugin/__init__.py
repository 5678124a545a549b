"""A third-party otel-cb plugin, as a user would write one.

It patches ``fakeclient.Client.call`` (tests/apps/fakeclient.py) the way the
real integrations patch httpx, and, when ``OTEL_CB_TESTPLUGIN_PROBE=1``,
reports which OpenTelemetry span is current inside httpx's transport, to
prove that our wrappers run inside OpenTelemetry's client span.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from otel_cb import CircuitOpenError
from otel_cb.plugin import Call, Patch, fallback, hookimpl, select_breaker

__all__ = ["otel_cb_patches", "otel_cb_state_change"]


def _call_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    host = args[0] if args else kwargs["host"]
    # The URL carries credentials, a path and a query: none may reach a breaker name.
    call = Call("http", f"http://{host}:80", method="GET", url=f"http://user:pw@{host}/secret/path?token=t")
    breaker = select_breaker(call)
    if breaker is None:
        return wrapped(*args, **kwargs)
    try:
        permit = breaker.acquire()
    except CircuitOpenError as error:
        value = fallback(call, error)
        if value is not None:
            return value
        raise
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        permit.record_exception(exc)
        raise
    permit.record_success()
    return result


def _httpx_probe(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from opentelemetry import trace

    span = trace.get_current_span()
    name = getattr(span, "name", None)
    print(f"PROBE current span: {name!r} recording={span.is_recording()}", file=sys.stderr, flush=True)
    return wrapped(*args, **kwargs)


@hookimpl
def otel_cb_patches() -> list[Patch]:
    patches = [Patch("fakeclient", "Client.call", _call_wrapper, integration="testplugin")]
    if os.environ.get("OTEL_CB_TESTPLUGIN_PROBE") == "1":
        patches.append(Patch("httpx", "HTTPTransport.handle_request", _httpx_probe, integration="testplugin"))
    return patches


@hookimpl
def otel_cb_state_change(breaker: Any, event: Any) -> None:
    print(f"STATE {breaker.name} {event.previous_state} -> {event.state}", file=sys.stderr, flush=True)
