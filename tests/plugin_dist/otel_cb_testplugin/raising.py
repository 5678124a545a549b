"""A plugin whose hooks raise: otel-cb must log each once and carry on."""

from __future__ import annotations

from typing import Any

from otel_cb.plugin import hookimpl

__all__ = ["otel_cb_configure", "otel_cb_select_breaker"]


@hookimpl
def otel_cb_configure(config: Any) -> None:
    raise RuntimeError("raising.otel_cb_configure fails on purpose")


@hookimpl(tryfirst=True)
def otel_cb_select_breaker(call: Any) -> str | None:
    raise RuntimeError("raising.otel_cb_select_breaker fails on purpose")
