"""Circuit breakers for gRPC clients: every call kind, ``grpc`` and ``grpc.aio``.

Usage
-----

Under ``otel-cb-instrument`` every channel made by ``grpc.insecure_channel``,
``grpc.secure_channel``, ``grpc.aio.insecure_channel`` and
``grpc.aio.secure_channel`` is protected, with nothing to change in the code.
The patches take effect for sync stubs and aio channels made after
``instrument()`` (``otel-cb-instrument`` patches before the application
imports grpc, so that is all of them). By hand, add an interceptor to a
channel::

    import grpc
    from otel_cb import CircuitBreaker, CircuitBreakerConfig
    from otel_cb.integrations.grpc import CircuitBreakerInterceptor, aio_interceptors

    shield = CircuitBreaker("shield", CircuitBreakerConfig.preset("llm_service"))
    channel = grpc.intercept_channel(grpc.insecure_channel("shield:50051"),
                                     CircuitBreakerInterceptor(shield))
    aio_channel = grpc.aio.insecure_channel("edge:50051", interceptors=aio_interceptors(shield))

``grpc.aio`` files each interceptor object under one call kind, so
``aio_interceptors()`` returns four, one per kind (each an
:class:`AioCircuitBreakerInterceptor`); list them after OpenTelemetry's
interceptors if you list those by hand.

Without a ``breaker``, an interceptor asks otel-cb's router (``match:`` rules
and ``otel_cb_select_breaker`` plugins, then one automatic breaker per channel
target) which breaker protects each call; pass ``target=`` (the channel's
target) so routing by target and automatic breakers work, or ``selector=`` (a
function of :class:`otel_cb.plugin.Call` returning a breaker or None) to
route yourself. A call no breaker protects goes through untouched.

What counts
-----------

- A call is admitted when it starts; a stream (any call kind with a streaming
  response or request) is one call, judged when it ends.
- Status ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``,
  ``INTERNAL``, ``UNKNOWN`` or ``DATA_LOSS`` is a failure, also when it comes
  mid-stream. ``OK`` and every other status (``INVALID_ARGUMENT``,
  ``NOT_FOUND``, ``PERMISSION_DENIED``...) is a success: the server answered.
- ``CANCELLED`` (the caller cancelled, or dropped a stream before its end)
  is no verdict; a half-open probe's slot is always handed back.
- A failure's ``grpc-retry-pushback-ms`` trailer (the server's retry hint)
  lengthens the open timeout if the failure opens the breaker.
- An ``otel_cb_classify`` plugin decides first; it gets the call, the finished
  RPC (a ``grpc.Call``: ``code()``, ``details()``...) as ``result``, and the
  ``grpc.RpcError`` as ``exception`` (None for ``OK``).
- ``.future()``, ``with_call()``, iterators and the ``read()``/``write()``
  style of ``grpc.aio`` all work as without the breaker.

Open circuit
------------

A rejected call is not started. The caller gets a ``grpc.RpcError`` with code
``UNAVAILABLE`` and details naming the breaker, which is also an
``otel_cb.CircuitOpenError`` (``.name``, ``.state``, ``.retry_after``):
:class:`GrpcCircuitOpenError` for ``grpc``, :class:`AioGrpcCircuitOpenError`
(an ``AioRpcError``) for ``grpc.aio``. So both ``except grpc.RpcError`` and
``except CircuitOpenError`` catch it.

Fallbacks
---------

An ``otel_cb_fallback`` plugin can answer a call instead of the error. It
gets the call and the error (the open-circuit error for a rejected call,
else the ``grpc.RpcError``) and returns a response message, or, for a call
with a streaming response, an iterable of messages; the caller then sees a
call that ended with ``OK`` and that value. A rejected call of any kind can
be served; a failed one when it has failed by the time the interceptor
returns: blocking sync unary-response calls and ``with_call()``, and aio
unary-unary calls. Served fallbacks are counted in the breaker's
``snapshot().fallbacks``.

Configuration
-------------

Per breaker, in the config file::

    circuit_breakers:
      shield:
        preset: llm_service
        match: {grpc: ["llm.shield.v1.ShieldService"]}
        failure_codes: [UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL]   # replaces the default set

``match: {grpc: [...]}`` entries name a full service (``llm.shield.v1.ShieldService``),
a method (``/llm.shield.v1.ShieldService/AnalyzeSecurityEvent``) or a channel
target (``shield:50051``); calls no rule matches get one automatic breaker
per channel target, named ``grpc://<target>``. ``failure_codes`` is a list of ``grpc.StatusCode``
names. Hand-wired interceptors take ``failure_codes=`` too.

Health check: a breaker the integration routes to gets the standard
``grpc.health.v1.Health/Check`` for the routed service, on a fresh plaintext
channel to the target. Nothing is asked while the breaker is closed: the
Health service is looked for when the breaker opens, and the check attached
once it answers. A server without the Health service, or not knowing the
service, gets none, said once; one not reachable in plaintext (down, or TLS)
is asked again while open and at the next opening
(``otel_cb.integrations._grpc_health``).

With OpenTelemetry
------------------

OpenTelemetry's grpc instrumentation stays the outer interceptor in either
order of instrumentation, so its client span covers the breaker: the span
carries ``circuit_breaker.name`` and ``circuit_breaker.state``, and
rejections, transitions and fallbacks become its events. (A ``grpc.aio``
call with a streaming request or response is judged when it ends, after
OpenTelemetry has ended its span, so a transition it causes is recorded on a
span of its own.) Calls to OpenTelemetry's own
collector services (``opentelemetry.proto.*``) are never auto-protected, so
exporting telemetry about breakers does not go through them.

Without grpc
------------

Importing this module imports no grpc: the plugin loads (and checks
``failure_codes`` in ``otel-cb config check``) where grpc is not installed,
without a word above DEBUG, and its patches wait for grpc to be imported.

Uninstrument
------------

``uninstrument()`` removes the patches (four ``grpc._channel.Channel``
methods and ``grpc.aio._channel.Channel.__init__``), and calls through
channels made before go unprotected too (the router answers None). The
patches sit below ``grpc.insecure_channel`` and friends, which OpenTelemetry
wraps (sync) or replaces (aio), so neither side's instrument or uninstrument
can drop the other's layer, in any order.

API
---
- ``CircuitBreakerInterceptor`` / ``aio_interceptors()`` (``AioCircuitBreakerInterceptor``):
  the hand-wired interceptors.
- ``GrpcCircuitOpenError`` / ``AioGrpcCircuitOpenError``: what a rejected call raises.
- ``DEFAULT_FAILURE_CODES``, ``parse_failure_codes(where, value)``: the status rule.
- ``clean_target(target)``: a channel target as breakers see it.
- ``validate_settings(name, section)``: checks ``failure_codes``, without importing grpc.
- ``otel_cb_config_keys()``, ``otel_cb_patches()``: this plugin's hooks.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..plugin import Patch, SectionValidator, hookimpl
from ._grpc_policy import clean_target, validate_settings

if TYPE_CHECKING:
    from ._grpc_aio import AioCircuitBreakerInterceptor, AioGrpcCircuitOpenError, aio_interceptors
    from ._grpc_exchange import DEFAULT_FAILURE_CODES, parse_failure_codes
    from ._grpc_sync import CircuitBreakerInterceptor, GrpcCircuitOpenError

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "AioCircuitBreakerInterceptor",
    "AioGrpcCircuitOpenError",
    "CircuitBreakerInterceptor",
    "GrpcCircuitOpenError",
    "aio_interceptors",
    "clean_target",
    "otel_cb_config_keys",
    "otel_cb_patches",
    "parse_failure_codes",
    "validate_settings",
]

# The plugin is loaded at start-up whether or not the application uses grpc (or
# has it installed): grpc is imported when one of these is first used.
_LAZY = {
    "DEFAULT_FAILURE_CODES": "._grpc_exchange",
    "parse_failure_codes": "._grpc_exchange",
    "CircuitBreakerInterceptor": "._grpc_sync",
    "GrpcCircuitOpenError": "._grpc_sync",
    "AioCircuitBreakerInterceptor": "._grpc_aio",
    "AioGrpcCircuitOpenError": "._grpc_aio",
    "aio_interceptors": "._grpc_aio",
}
_shells: dict[str, types.ModuleType] = {}


def _shell(name: str) -> types.ModuleType:
    module = _shells.get(name)
    if module is None:
        module = _shells[name] = importlib.import_module(name, __package__)
    return module


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_shell(module), name)


def _protect_multicallable(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _shell("._grpc_sync").protect_multicallable(wrapped, instance, args, kwargs)


def _protect_aio_channel(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _shell("._grpc_aio").protect_aio_channel(wrapped, instance, args, kwargs)


_SYNC_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


@hookimpl
def otel_cb_config_keys() -> Mapping[str, SectionValidator]:
    """The breaker-section key of the grpc integration, checked without importing grpc."""
    return {"failure_codes": validate_settings}


@hookimpl
def otel_cb_patches() -> list[Patch]:
    """Protect every sync and aio channel (applied when grpc is imported).

    Patched below ``grpc.insecure_channel`` and friends, which OpenTelemetry
    wraps (sync) or replaces (aio): the multi-callables of the sync channel
    class, and the aio channel's constructor (which appends our interceptor,
    so OpenTelemetry's, listed first, stays outside).
    """
    return [
        *(Patch("grpc._channel", f"Channel.{kind}", _protect_multicallable, "grpc") for kind in _SYNC_KINDS),
        Patch("grpc.aio._channel", "Channel.__init__", _protect_aio_channel, "grpc"),
    ]
