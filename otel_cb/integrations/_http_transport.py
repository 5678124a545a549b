"""The httpx machinery behind ``otel_cb.integrations.httpx``: one exchange logic, two thin shells.

``_Exchange`` holds everything a protected request needs decided (admission,
classification, Retry-After, fallbacks, caching); ``send_sync`` and
``send_async`` differ only in awaiting the inner transport, and the
exchange's two kinds (``_SyncExchange``, ``_AsyncExchange``), which are also
the byte stream of a healthy response, only in iterating sync or async. The
transports users wire by hand and the patches ``otel-cb-instrument`` applies
both go through them.

Imports httpx, so ``otel_cb.integrations.httpx`` imports this module only
when httpx is in use.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx

from .. import CircuitBreaker, CircuitOpenError, CircuitState, Permit
from ..plugin import (
    Call,
    RouteMemo,
    Verdict,
    annotate_span,
    classify_exception,
    log_once,
    select_breaker,
)
from ._http_policy import (
    StaleCache,
    StaticResponse,
    judge_head,
    parse_failure_statuses,
    parse_fallback,
    serve_http_fallback,
    stale_cache_key,
)
from ._http_routes import HTTPRoute, route_to

__all__ = [
    "AsyncCircuitBreakerTransport",
    "CircuitBreakerTransport",
    "HTTPCircuitOpenError",
    "Selector",
    "patched_handle_async_request",
    "patched_handle_request",
]

Selector = Callable[[Call], CircuitBreaker | None]

FALLBACK_HEADER = "X-Otel-CB-Fallback"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# What httpcore sends to; any other scheme it refuses with UnsupportedProtocol before any I/O.
_SCHEMES = frozenset(_DEFAULT_PORTS)
# Errors that say nothing about the server: the request was wrong, the client's own pool
# was exhausted, or another breaker refused it; none of them reached the server.
_NOT_THE_SERVER = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.PoolTimeout, CircuitOpenError)
_NO_KWARGS: dict[str, Any] = {}
# Set while a hand-wired CircuitBreakerTransport's request runs, so a patched transport inside it
# does not guard the same request twice. Only hand-wired transports set it (beneath a patched
# transport is httpcore, never another httpx transport), and until one is built the patches need
# not read it: a context lookup per request saved.
_GUARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("otel_cb.httpx.guarded", default=False)
_guards = False


def _hand_wired() -> None:
    global _guards
    _guards = True


class HTTPCircuitOpenError(CircuitOpenError, httpx.TransportError):
    """An open breaker refused an httpx request; it was not sent.

    Both a ``CircuitOpenError`` (``.name``, ``.state``, ``.retry_after``) and an
    ``httpx.TransportError``, so an application's ``except httpx.HTTPError``
    handles it as it handles a connection error.
    """

    def __init__(self, name: str, state: CircuitState, retry_after: float | None, *,
                 request: httpx.Request | None = None) -> None:
        # Neither base's __init__ fits the other's signature: set both sides' fields.
        Exception.__init__(self, name, state, retry_after)
        self.name = name
        self.state = state
        self.retry_after = retry_after
        self._request = request

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, CircuitState, float | None]]:
        return (type(self), (self.name, self.state, self.retry_after))


def describe(request: httpx.Request) -> Call | None:
    """The ``Call`` of a request: target ``scheme://host:port``, the URL without userinfo.

    None for a request that names no destination: a scheme httpcore refuses
    (``UnsupportedProtocol``, raised before any I/O) or an empty host. The
    client rejects those itself; no breaker is created or touched for them.
    """
    target = _target_of(request.url)
    # The URL text is built only if something reads call.url (a stale-cache key, a hook).
    return None if target is None else Call("http", target, request.method, "", _url_text, request)


def _url_text(request: httpx.Request) -> str:
    url = request.url
    return str(url.copy_with(username=None, password=None) if url.userinfo else url)


def _target_of(url: httpx.URL) -> str | None:
    scheme = url.scheme
    host = url.host
    if scheme not in _SCHEMES or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{url.port or _DEFAULT_PORTS[scheme]}"


def _not_the_server(exc: BaseException) -> Verdict | None:
    return "ignored" if isinstance(exc, _NOT_THE_SERVER) else None


def _parsed_urls() -> bool:
    """Whether this httpx keeps its parsed URL as the ``ParseResult`` a route key can be read off."""
    try:
        url = httpx.URL("https://Example.org:8443/")
        parsed = url._uri_reference
        return (parsed.scheme, parsed.host, parsed.port) == (url.scheme, url.raw_host.decode("ascii"), url.port)
    except Exception:
        return False


# The route key read off the URL's parsed tuple costs a third of reading it through URL's properties
# (each a Python call; raw_host encodes the host anew), on every request; checked once against them.
_PARSED_URLS = _parsed_urls()
_MISS = RouteMemo.MISS
RouteKey = tuple[str, str | bytes, int | None, str]


class _Router:
    """Picks the breaker and the settings for each request of one transport (or of the patches).

    Without a selector, a request's route depends on its destination and
    method only, so it is memoised per ``(scheme, host, port, method)`` and a
    repeat request builds no ``Call``; a selector is asked on every request.
    """

    __slots__ = ("_breaker", "_selector", "_statuses", "_fallback", "_routes")

    def __init__(self, breaker: CircuitBreaker | None = None, selector: Selector | None = None,
                 failure_statuses: object = None, fallback_config: object = None) -> None:
        if breaker is not None and selector is not None:
            raise ValueError("breaker, selector: give one of them, not both")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ValueError(f"breaker: {breaker!r} is not allowed; use an otel_cb.CircuitBreaker")
        if selector is not None and not callable(selector):
            raise ValueError(f"selector: {selector!r} is not allowed; use a callable taking an otel_cb.plugin.Call")
        self._breaker = breaker
        self._selector = selector
        self._statuses = None if failure_statuses is None else \
            parse_failure_statuses("failure_statuses", failure_statuses)
        self._fallback = None if fallback_config is None else parse_fallback(
            "fallback", fallback_config, **({"clock": breaker.clock} if breaker is not None else {}))
        self._routes: RouteMemo[RouteKey, HTTPRoute | None] | None = RouteMemo() if selector is None else None

    def prepare(self, request: httpx.Request, exchange: type[_Exchange]) -> _Exchange | None:
        """The exchange (of class ``exchange``) for ``request``, or None when no breaker protects it."""
        try:
            routes = self._routes
            if routes is None:
                return self._selected(request, exchange)
            key: RouteKey
            if _PARSED_URLS:
                parsed = request.url._uri_reference
                key = (parsed.scheme, parsed.host, parsed.port, request.method)
            else:
                url = request.url
                key = (url.scheme, url.raw_host, url.port, request.method)
            route = routes.get(key)
            if route is _MISS:
                route = routes.remember(key, lambda: self._route(describe(request)))
            return None if route is None else exchange(route, request)
        except Exception:
            log_once(("httpx", "prepare"), "otel-cb: choosing a breaker for an httpx request failed; "
                      "the request goes out unprotected", exc_info=True)
            return None

    def _route(self, call: Call | None) -> HTTPRoute | None:
        if call is None:
            return None
        breaker = self._breaker if self._breaker is not None else select_breaker(call)
        return None if breaker is None else route_to(breaker, call, "httpx", self._statuses, self._fallback)

    def _selected(self, request: httpx.Request, exchange: type[_Exchange]) -> _Exchange | None:
        call = describe(request)
        if call is None:
            return None
        breaker = self._selector(call)  # type: ignore[misc]  # only routers with a selector come here
        if breaker is None:
            return None
        if not isinstance(breaker, CircuitBreaker):
            log_once(("httpx", "selector"), "otel-cb: the selector returned a %s, not a CircuitBreaker; "
                      "the request goes out unprotected", type(breaker).__name__)
            return None
        return exchange(route_to(breaker, call, "httpx", self._statuses, self._fallback), request, call)


class _Exchange:
    """One protected request, from admission to the verdict on its response body.

    It is also the body it waits for: its sync and async kinds are the byte
    stream that replaces a healthy response's own, so a request builds one
    object for both. Fields a request may never need are set where they
    start to matter, not here: ``permit`` by ``admit``, ``hook_verdict`` and
    ``_inner`` with a healthy head, ``cache_key`` and ``size`` with ``chunks``
    kept for the stale cache.
    """

    __slots__ = ("route", "request", "permit", "token", "hook_verdict", "cache_key", "chunks", "size", "response",
                 "_call", "_inner")

    permit: Permit
    _inner: Any  # the response's own stream, sync or async as the kind of exchange is

    def __init__(self, route: HTTPRoute, request: httpx.Request, call: Call | None = None) -> None:
        self.route = route
        self.request = request
        self._call = call
        self.token: contextvars.Token[bool] | None = None
        self.chunks: list[bytes] | None = None
        self.response: httpx.Response | None = None  # the response whose body is pending

    @property
    def call(self) -> Call:
        """The request as hooks and fallbacks see it, built when first read (most requests never need it)."""
        call = self._call
        if call is None:
            call = self._call = Call("http", self.route.target, self.request.method, "", _url_text, self.request)
        return call

    # -- before the request ---------------------------------------------------

    def admit(self, guard: bool) -> httpx.Response | None:
        """Take a permit and mark the current span: None when admitted.

        ``guard``: the request goes on into transports that may be patched (a
        hand-wired transport's), which must not guard it again.
        A refused request gets a fallback response, or raises ``HTTPCircuitOpenError``.
        """
        breaker = self.route.breaker
        try:
            self.permit = breaker.acquire()
        except CircuitOpenError as error:
            http_error = HTTPCircuitOpenError(error.name, error.state, error.retry_after, request=self.request)
            annotate_span(breaker, error.state)
            served = self._fallback(http_error)
            if served is None:
                raise http_error from None
            return served
        annotate_span(breaker, self.permit.state)
        if guard:
            self.token = _GUARDED.set(True)
        return None

    # -- after the request ----------------------------------------------------

    def failed(self, exc: BaseException) -> httpx.Response:
        """Record an exception from the inner transport; serve a fallback or re-raise ``exc``."""
        self._unguard()
        served = None
        try:
            if self._record_exception(exc) == "failure":
                served = self._fallback(exc)
        except Exception:
            log_once(("httpx", "failed"), "otel-cb: handling an httpx error failed", exc_info=True)
        if served is None:
            raise exc
        return served

    def responded(self, response: httpx.Response) -> httpx.Response:
        """Classify the response head; a healthy one gets its verdict when its body (this exchange,
        as its stream) ends."""
        if self.token is not None:
            self._unguard()
        permit = self.permit
        route = self.route
        settings = route.settings
        try:
            status = response.status_code
            hooked = judge_head(self.call if route.classified else None, permit, response, status,
                                response.headers, settings.failure_statuses)
            if hooked is None:
                return response
            self.hook_verdict = hooked
            if settings.fallback is not None:
                self.cache_key = stale_cache_key(settings.fallback, self.call, status, _raw_headers)
                if self.cache_key is not None:
                    self.chunks = []
                    self.size = 0
            self.response = response
        except Exception:
            log_once(("httpx", "responded"), "otel-cb: classifying an httpx response failed; counted as "
                      "no verdict", exc_info=True)
            permit.release()
            return response
        if response.is_closed:
            # Read and closed by the inner transport already (an in-memory body, as
            # httpx.MockTransport returns): no stream will end later, so the verdict lands now.
            self._body_read(response)
        else:
            self._inner = response.stream
            response.stream = self  # type: ignore[assignment]  # a _SyncExchange or _AsyncExchange
        return response

    def _body_read(self, response: httpx.Response) -> None:
        if self.chunks is not None:
            try:
                self.body_chunk(response.content)
            except httpx.ResponseNotRead:
                self.chunks = None
        self.body_complete()
        self.body_closed()

    # -- while the body streams -----------------------------------------------

    def body_chunk(self, chunk: bytes) -> None:
        chunks = self.chunks
        if chunks is not None:
            self.size += len(chunk)
            cache = self.route.settings.fallback
            if isinstance(cache, StaleCache) and self.size <= cache.max_entry_bytes:
                chunks.append(chunk)
            else:
                self.chunks = None

    # ``response`` is set while the body is pending and let go of once it ends: the response holds its
    # stream (this exchange), which holds the response, and breaking that cycle frees a finished request
    # by reference counting, not by the GC. A permit ignores any report after its first, so the ends
    # below report without asking ``permit.done`` (a property, on every request) unless they would
    # store a cache entry.

    def body_error(self, exc: BaseException) -> None:
        # Cancellation and early closes say nothing about the server: body_closed decides.
        if isinstance(exc, Exception):
            try:
                self._record_exception(exc)
            except Exception:
                log_once(("httpx", "body"), "otel-cb: handling an httpx body error failed", exc_info=True)

    def body_complete(self) -> None:
        response = self.response
        if response is None:  # closed already, and judged then
            return
        self.response = None
        chunks = self.chunks
        if chunks is None:  # nothing to cache: no stale cache, or not a cacheable response
            if self.hook_verdict:
                self.permit.record_success()
            else:
                self.permit.record_result(response)
            return
        self.chunks = None
        if self.permit.done:
            return
        self._record_healthy(response)
        try:
            cache = self.route.settings.fallback
            if isinstance(cache, StaleCache) and self.cache_key is not None:
                cache.store(self.cache_key, response.status_code, list(response.headers.raw), b"".join(chunks))
        except Exception:
            log_once(("httpx", "cache"), "otel-cb: caching an httpx response failed", exc_info=True)

    def body_closed(self) -> None:
        """The body was closed, read or not: the head already showed a healthy server."""
        response = self.response
        if response is not None:
            self.response = None
            self.chunks = None
            if self.hook_verdict:
                self.permit.record_success()
            else:
                self.permit.record_result(response)

    def _record_healthy(self, response: httpx.Response) -> None:
        if self.hook_verdict:
            self.permit.record_success()
        else:
            self.permit.record_result(response)

    # -- shared -----------------------------------------------------------------

    def _unguard(self) -> None:
        if self.token is not None:
            _GUARDED.reset(self.token)
            self.token = None

    def _record_exception(self, exc: BaseException) -> Verdict | None:
        verdict = classify_exception(self.call, self.route.breaker, exc, _not_the_server)
        self.permit.record(verdict)
        return verdict

    def _fallback(self, error: BaseException) -> httpx.Response | None:
        """A response that serves the call instead of ``error``, counted; None when there is none."""
        return serve_http_fallback(self.call, self.route.breaker, error, httpx.Response,
                                   self.route.settings.fallback, _configured_response)


class _SyncExchange(_Exchange, httpx.SyncByteStream):
    """The exchange of a sync request: the verdict on a healthy head waits for this body's end."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self.chunks is None:
                yield from self._inner
            else:
                for chunk in self._inner:
                    self.body_chunk(chunk)
                    yield chunk
        except BaseException as exc:
            self.body_error(exc)
            raise
        self.body_complete()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self.body_closed()


class _AsyncExchange(_Exchange, httpx.AsyncByteStream):
    """The exchange of an async request: the verdict on a healthy head waits for this body's end."""

    __slots__ = ()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                if self.chunks is not None:
                    self.body_chunk(chunk)
                yield chunk
        except BaseException as exc:
            self.body_error(exc)
            raise
        self.body_complete()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self.body_closed()


def _raw_headers(request: object) -> list[tuple[bytes, bytes]] | None:
    return request.headers.raw if isinstance(request, httpx.Request) else None


def _configured_response(configured: StaleCache | StaticResponse, call: Call) -> httpx.Response | None:
    request = call.request if isinstance(call.request, httpx.Request) else None
    if isinstance(configured, StaticResponse):
        static_headers = [*configured.headers, (FALLBACK_HEADER, configured.kind)]
        return httpx.Response(configured.status, headers=static_headers, content=configured.body, request=request)
    if request is None:
        return None
    key = configured.key(call.method, call.url, request.headers.raw)
    entry = configured.lookup(key) if key is not None else None
    if entry is None:
        return None
    status, raw_headers, body, age = entry
    headers = httpx.Headers([(k, v) for k, v in raw_headers if k.lower() not in (b"age", b"transfer-encoding")])
    headers["Content-Length"] = str(len(body))
    headers[FALLBACK_HEADER] = configured.kind
    headers["Age"] = str(int(age))
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request)


# -- the two shells ---------------------------------------------------------------


def send_sync(router: _Router, request: httpx.Request, send: Callable[..., httpx.Response],
              args: tuple[Any, ...], kwargs: dict[str, Any], guard: bool) -> httpx.Response:
    """Call ``send(*args, **kwargs)``, which sends ``request``, under the breaker ``router`` picks.

    ``guard``: set ``_GUARDED`` while ``send`` runs (a hand-wired transport's inner transport may be patched).
    """
    exchange = router.prepare(request, _SyncExchange)
    if exchange is None:
        return send(*args, **kwargs)
    served = exchange.admit(guard)
    if served is not None:
        return served
    try:
        response = send(*args, **kwargs)
    except BaseException as exc:
        return exchange.failed(exc)
    return exchange.responded(response)


def send_async(router: _Router, request: httpx.Request, send: Callable[..., Awaitable[httpx.Response]],
               args: tuple[Any, ...], kwargs: dict[str, Any], guard: bool) -> Awaitable[httpx.Response]:
    """The async twin of ``send_sync``: routes now, and returns what to await.

    An unprotected request gets ``send``'s own awaitable, untouched.
    """
    exchange = router.prepare(request, _AsyncExchange)
    if exchange is None:
        return send(*args, **kwargs)
    return _exchange_async(exchange, send, args, kwargs, guard)


async def _exchange_async(exchange: _Exchange, send: Callable[..., Awaitable[httpx.Response]],
                          args: tuple[Any, ...], kwargs: dict[str, Any], guard: bool) -> httpx.Response:
    served = exchange.admit(guard)
    if served is not None:
        return served
    try:
        response = await send(*args, **kwargs)
    except BaseException as exc:
        return exchange.failed(exc)
    return exchange.responded(response)


# -- hand-wired transports --------------------------------------------------------


class CircuitBreakerTransport(httpx.BaseTransport):
    """An httpx transport that sends through ``transport`` under a circuit breaker.

    Args:
        transport: The transport that really sends, e.g. ``httpx.HTTPTransport()``.
        breaker: The breaker guarding every request. Give this or ``selector``.
        selector: ``selector(call) -> CircuitBreaker | None`` picks a breaker per
            request (``call`` is an ``otel_cb.plugin.Call``; None leaves the
            request unprotected). Without ``breaker`` and ``selector``, the
            breakers of ``otel_cb.instrument()`` are used.
        failure_statuses: Statuses that count as failures, e.g. ``[429, "5xx"]``;
            default: the breaker's config section, else 429 and 5xx.
        fallback: ``{"type": "stale_cache", "ttl": "5m", "max_entries": 1000}`` or
            ``{"type": "static", "status": 503, "json": {...}}``; default: the
            breaker's config section.

    Raises:
        ValueError: naming the argument, the value and what is allowed.
    """

    def __init__(self, transport: httpx.BaseTransport, *, breaker: CircuitBreaker | None = None,
                 selector: Selector | None = None, failure_statuses: object = None, fallback: object = None) -> None:
        if not isinstance(transport, httpx.BaseTransport):
            raise ValueError(f"transport: {transport!r} is not allowed; use an httpx.BaseTransport")
        self._transport = transport
        self._router = _Router(breaker, selector, failure_statuses, fallback)
        _hand_wired()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return send_sync(self._router, request, self._transport.handle_request, (request,), _NO_KWARGS, True)

    def close(self) -> None:
        self._transport.close()


class AsyncCircuitBreakerTransport(httpx.AsyncBaseTransport):
    """The async twin of ``CircuitBreakerTransport``, for ``httpx.AsyncClient``; same arguments."""

    def __init__(self, transport: httpx.AsyncBaseTransport, *, breaker: CircuitBreaker | None = None,
                 selector: Selector | None = None, failure_statuses: object = None, fallback: object = None) -> None:
        if not isinstance(transport, httpx.AsyncBaseTransport):
            raise ValueError(f"transport: {transport!r} is not allowed; use an httpx.AsyncBaseTransport")
        self._transport = transport
        self._router = _Router(breaker, selector, failure_statuses, fallback)
        _hand_wired()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await send_async(self._router, request, self._transport.handle_async_request, (request,),
                                _NO_KWARGS, True)

    async def aclose(self) -> None:
        await self._transport.aclose()


# -- the patches --------------------------------------------------------------------

_AUTO = _Router()


def patched_handle_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``httpx.HTTPTransport.handle_request``."""
    request = args[0] if args else kwargs.get("request")
    if (_guards and _GUARDED.get()) or not isinstance(request, httpx.Request):
        return wrapped(*args, **kwargs)
    return send_sync(_AUTO, request, wrapped, args, kwargs, False)


def patched_handle_async_request(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                                 kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``httpx.AsyncHTTPTransport.handle_async_request``: returns the coroutine to await.

    A plain function, so a call that is not protected returns httpx's own
    coroutine untouched.
    """
    request = args[0] if args else kwargs.get("request")
    if (_guards and _GUARDED.get()) or not isinstance(request, httpx.Request):
        return wrapped(*args, **kwargs)
    return send_async(_AUTO, request, wrapped, args, kwargs, False)


# Public under their documented home, as tracebacks and reprs show them.
for _public in (CircuitBreakerTransport, AsyncCircuitBreakerTransport, HTTPCircuitOpenError):
    _public.__module__ = "otel_cb.integrations.httpx"
del _public
