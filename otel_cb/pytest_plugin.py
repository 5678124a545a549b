"""The pytest plugin: while otel-cb is instrumented, every test starts with fresh circuit breakers.

pytest loads it through the ``pytest11`` entry point ``otel_cb`` wherever
otel-cb is installed (``-p no:otel_cb`` turns it off). It does nothing unless
``otel_cb.instrument()`` has run in the test process: by the agent's
``sitecustomize``, by ``otel-cb-instrument pytest ...``, by a conftest or by a
fixture. Then, before each test's setup, automatic breakers are forgotten and
every other breaker in ``otel_cb.registry`` that is not closed or holds calls
is reset (:func:`otel_cb._plugins.reset_breakers` says exactly what), so a
test that deliberately fails against a mock host cannot open the breaker that
later, unrelated tests call through.

A test (or a class or module, through ``pytestmark``) marked
``@pytest.mark.otel_cb_keep_state`` starts with the breakers the previous
test left. The marker is registered in every run, so a suite that uses it
also runs cleanly without the agent (``--strict-markers``).

Without instrumentation nothing of otel-cb is imported beyond its core
(``import otel_cb``: no OpenTelemetry, wrapt or pluggy), and no test sees a
difference.
"""

from __future__ import annotations

import sys

import pytest

__all__ = ["MARKER", "pytest_configure", "pytest_runtest_setup"]

MARKER = "otel_cb_keep_state"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: under otel-cb instrumentation, start this test with the circuit breakers the "
        "previous test left instead of fresh ones")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Looked up, never imported: a process that never instrumented has not imported it.
    plugins = sys.modules.get("otel_cb._plugins")
    if plugins is None or plugins.active() is None or item.get_closest_marker(MARKER) is not None:
        return
    plugins.reset_breakers()
