"""The ``edge_agent`` plugin: EdgeAgent, the edge-inference gRPC proxy, behind ``edge_agent_client``.

Routing: every call to ``llm.edge.v1.EdgeAgentService``, and every call to
``EDGE_AGENT_TARGET`` (or the ``match:`` rules of the ``edge_agent_client`` section).

Settings (the origin's EdgeAgent override): 2 consecutive failures, failure
rate 0.2, 5 s open, 5 probe successes to close. The bidirectional
``StreamInference`` stream is protected per stream by the gRPC integration:
a stream is admitted when opened, an error status mid-stream is a failure, a
clean end a success, and a stream the caller abandons no verdict. Health
check: the grpc integration's default, ``grpc.health.v1.Health/Check`` for
``llm.edge.v1.EdgeAgentService`` on EdgeAgent's target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otel_cb.plugin import Call, hookimpl

from ._routing import env_target

__all__ = ["BREAKER", "DEFAULTS", "SERVICE", "otel_cb_breaker_defaults", "otel_cb_select_breaker"]

BREAKER = "edge_agent_client"
SERVICE = "llm.edge.v1.EdgeAgentService"
DEFAULTS: Mapping[str, Any] = {
    "preset": "default",
    "failure_threshold": 2,
    "failure_rate_threshold": 0.2,
    "open_timeout": "5s",
    "success_threshold": 5,
}


@hookimpl
def otel_cb_breaker_defaults() -> Mapping[str, Mapping[str, Any]]:
    return {BREAKER: DEFAULTS}


@hookimpl
def otel_cb_select_breaker(call: Call) -> str | None:
    if call.kind == "grpc" and (call.service == SERVICE or call.target == env_target("EDGE_AGENT_TARGET")):
        return BREAKER
    return None
