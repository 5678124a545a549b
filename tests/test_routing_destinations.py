"""The built-in router gives no automatic breaker to a call that names no destination."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import otel_cb
from otel_cb.plugin import Call, select_breaker


@pytest.fixture(autouse=True)
def automatic() -> Iterator[None]:
    otel_cb.instrument({"auto_breakers": {"enabled": True, "max": 10}}, disabled=["httpx", "grpc", "asyncpg"])
    try:
        yield
    finally:
        otel_cb.uninstrument()


@pytest.mark.parametrize("call", [
    Call("http", "://:0", "GET"),
    Call("http", "http://:80", "GET"),
    Call("http", "invalid://example.org:0", "GET"),
    Call("http", "", "GET"),
    Call("grpc", "", "/a.B/C"),
    Call("db", ":5432/app", "fetch"),
], ids=repr)
def test_no_destination_no_automatic_breaker(call: Call) -> None:
    before = {breaker.name for breaker in otel_cb.registry}
    assert select_breaker(call) is None
    assert {breaker.name for breaker in otel_cb.registry} == before


@pytest.mark.parametrize("call", [
    Call("http", "http://api:8080", "GET"),
    Call("grpc", "unix:///run/app.sock", "/a.B/C"),
    Call("db", "/run/postgresql:5432/app", "fetch"),
], ids=repr)
def test_real_destinations_still_get_one(call: Call) -> None:
    breaker = select_breaker(call)
    assert breaker is not None and breaker.name.endswith(call.target.rpartition("//")[2])
