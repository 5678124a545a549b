"""Typed clients for Sentinel, Shield and EdgeAgent: plain httpx and grpc code.

There is no breaker code in here. Under ``otel-cb-instrument`` (or after
``otel_cb.instrument()``) the httpx and grpc integrations protect every call
these clients make, and the service plugins route those calls to the
``sentinel_client``, ``shield_client`` and ``edge_agent_client`` breakers.
Each client implements :class:`otel_cb.CircuitProtected`, so a caller can
ask it how its dependency is doing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import httpx

from otel_cb import CircuitBreaker, CircuitState, registry
from otel_cb.plugin import Call, CallKind, select_breaker

from ._routing import http_origin
from .protos import edge_pb2, edge_pb2_grpc, shield_pb2, shield_pb2_grpc
from .shield import NotScanned

__all__ = [
    "Alert",
    "AlertList",
    "EdgeAgentClient",
    "SentinelClient",
    "ShieldClient",
    "ShieldUnavailableError",
]


class _Protected:
    """``CircuitProtected`` for a client whose calls go to one destination."""

    _breaker_name: str
    _call: Call

    @property
    def circuit_breaker(self) -> CircuitBreaker:
        # The breaker the instrumentation routes this client's calls to; the
        # named one from the registry while otel-cb is not instrumented.
        return select_breaker(self._call) or registry.get_or_create(self._breaker_name)

    @property
    def circuit_state(self) -> CircuitState:
        return self.circuit_breaker.state

    @property
    def is_healthy(self) -> bool:
        return self.circuit_breaker.is_closed


def _call(kind: CallKind, target: str, method: str = "", service: str = "") -> Call:
    return Call(kind=kind, target=target, method=method, service=service)


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    severity: str
    message: str


@dataclass(frozen=True, slots=True)
class AlertList:
    """Alerts from Sentinel; ``stale`` when served from the breaker's cache while Sentinel is down."""

    alerts: tuple[Alert, ...]
    stale: bool


class SentinelClient(_Protected):
    """Sentinel's REST API: anomaly alerts.

    Args:
        base_url: Sentinel's base URL (default: ``SENTINEL_URL``).
        timeout: Seconds per request.
    """

    _breaker_name = "sentinel_client"

    def __init__(self, base_url: str | None = None, *, timeout: float = 1.0) -> None:
        self.base_url = (base_url or os.environ.get("SENTINEL_URL") or "http://127.0.0.1:8080").rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._call = _call("http", http_origin(self.base_url), "GET")

    async def fetch_alerts(self, limit: int = 10) -> AlertList:
        """The latest alerts; raises ``httpx.HTTPError`` (or ``CircuitOpenError``) when none can be had."""
        response = await self._http.get("/api/v1/alerts", params={"limit": limit})
        response.raise_for_status()
        alerts = tuple(Alert(**item) for item in response.json()["alerts"])
        return AlertList(alerts, stale=response.headers.get("X-Otel-CB-Fallback") == "stale-cache")

    async def analyze(self, alert: Alert) -> dict[str, Any]:
        """Ask Sentinel for a deeper analysis of one alert (never served from a cache)."""
        response = await self._http.post("/api/v1/analyze", json={"id": alert.id})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def aclose(self) -> None:
        await self._http.aclose()


class ShieldUnavailableError(Exception):
    """Shield could not scan an event. The event was NOT scanned: treat it as unsafe.

    Attributes:
        event_id: The event that was not scanned.
    """

    scanned = False

    def __init__(self, event_id: str, cause: BaseException) -> None:
        self.event_id = event_id
        super().__init__(f"Shield unavailable ({type(cause).__name__}): security event {event_id!r} was NOT "
                         "scanned; treat its content as unsafe")


class ShieldClient(_Protected):
    """Shield's gRPC API: security analysis. Fails closed.

    Args:
        target: Shield's ``host:port`` (default: ``SHIELD_TARGET``).
        timeout: Deadline per call, in seconds.
    """

    _breaker_name = "shield_client"
    SERVICE = "llm.shield.v1.ShieldService"

    def __init__(self, target: str | None = None, *, timeout: float = 1.0) -> None:
        self.target = target or os.environ.get("SHIELD_TARGET") or "127.0.0.1:50051"
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = shield_pb2_grpc.ShieldServiceStub(self._channel)
        self._call = _call("grpc", self.target, f"/{self.SERVICE}/AnalyzeSecurityEvent", self.SERVICE)

    async def analyze_security_event(self, event_id: str, payload: str) -> shield_pb2.SecurityVerdict:
        """Shield's verdict on one event.

        Raises:
            ShieldUnavailableError: whenever no verdict came from Shield itself
                (an open breaker included); the event was not scanned.
        """
        try:
            verdict: shield_pb2.SecurityVerdict = await self._stub.AnalyzeSecurityEvent(
                shield_pb2.SecurityEvent(event_id=event_id, payload=payload), timeout=self._timeout)
        except Exception as exc:
            raise ShieldUnavailableError(event_id, exc) from exc
        if isinstance(verdict, NotScanned):  # the shield plugin's refusal: keep the real reason
            raise ShieldUnavailableError(event_id, verdict.error) from verdict.error
        if not isinstance(verdict, shield_pb2.SecurityVerdict) or verdict.event_id != event_id:
            # Only Shield itself answers for an event: anything else was not a scan.
            raise ShieldUnavailableError(event_id, ValueError(f"no verdict from Shield: {verdict!r}"))
        return verdict

    async def aclose(self) -> None:
        await self._channel.close()


class EdgeAgentClient(_Protected):
    """EdgeAgent's gRPC API: streamed inference.

    Args:
        target: EdgeAgent's ``host:port`` (default: ``EDGE_AGENT_TARGET``).
        timeout: Deadline of one whole stream, in seconds.
    """

    _breaker_name = "edge_agent_client"
    SERVICE = "llm.edge.v1.EdgeAgentService"

    def __init__(self, target: str | None = None, *, timeout: float = 2.0) -> None:
        self.target = target or os.environ.get("EDGE_AGENT_TARGET") or "127.0.0.1:50052"
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = edge_pb2_grpc.EdgeAgentServiceStub(self._channel)
        self._call = _call("grpc", self.target, f"/{self.SERVICE}/StreamInference", self.SERVICE)

    async def stream_inference(self, requests: AsyncIterable[edge_pb2.InferenceRequest]
                               ) -> AsyncIterator[edge_pb2.InferenceChunk]:
        """One chunk back per request, as they are produced."""
        call = self._stub.StreamInference(requests, timeout=self._timeout)
        async for chunk in call:
            yield chunk

    async def aclose(self) -> None:
        await self._channel.close()
