"""The requests machinery behind ``otel_cb.integrations.requests``: one exchange per HTTP hop.

The seam is ``requests.adapters.HTTPAdapter.send``: one call per request on
the wire (each redirect hop is its own), after requests has prepared the
URL, chosen the adapter and before any I/O; everything ``Session.send`` does
around it (hooks, cookies, redirects, reading the body unless ``stream=True``)
is untouched, and OpenTelemetry's requests instrumentation, which replaces
``Session.send``, always runs outside it. A healthy response head leaves its
verdict to the body: ``Response.iter_content`` (what ``.content``, ``.text``,
``.json()`` and ``iter_lines`` read through) and ``Response.close`` are
patched to deliver it. The exchange waiting for its body rides on the
response itself (``_EXCHANGE``), so it lives exactly as long as the response.

Written against the public kit only (``otel_cb.plugin``), with the HTTP
policy shared with httpx (``_http_policy``). Imports requests, so the plugin
module imports this one only when requests is in use.
"""

from __future__ import annotations

import http
import io
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.exceptions import InvalidHeader, InvalidSchema, InvalidURL, MissingSchema, URLRequired
from urllib3 import HTTPHeaderDict, HTTPResponse

from .. import CircuitOpenError, CircuitState, Permit
from ..plugin import (
    Call,
    RouteMemo,
    Verdict,
    annotate_span,
    classify_exception,
    log_once,
)
from ._http_policy import (
    StaleCache,
    StaticResponse,
    judge_head,
    serve_http_fallback,
    stale_cache_key,
)
from ._http_routes import HTTPRoute, route_http

__all__ = ["RequestsCircuitOpenError", "describe", "patched_close", "patched_iter_content", "patched_send"]

FALLBACK_HEADER = "X-Otel-CB-Fallback"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A prepared URL's scheme and netloc; (scheme, netloc) -> target (None: no destination), built once.
_ORIGIN = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://([^/?#]*)")
_targets: dict[tuple[str, str], str | None] = {}
_MAX_TARGETS = 4096
# Errors that say nothing about the server: the request or the client's set-up was wrong, or
# another breaker (an adapter subclass's own) refused it; none of them reached the server.
_NOT_THE_SERVER = (InvalidURL, InvalidHeader, InvalidSchema, MissingSchema, URLRequired, CircuitOpenError)
# A stored body is the decoded one iter_content yields: its encoding and length headers no longer apply.
_NOT_STORED = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_NOT_REPLAYED = frozenset({b"age", b"content-length", b"transfer-encoding"})
# The response attribute of an exchange whose healthy head waits for its body's end. On the response
# (whose class has no __slots__) rather than in a weak mapping of pending responses: no weakref and
# callback per request, and the exchange still goes when the response does, by reference counting (the
# exchange holds nothing of the response, so no cycle). requests pickles and copies a response by its
# __attrs__ only, so copies never carry it; each end of the body sets it to None (_forget). Set and read
# as a plain attribute, never through response.__dict__: materialising an instance's dict makes every
# attribute access of requests' own code on it miss its specialised fast path (paid per request).
_EXCHANGE = "_otel_cb_exchange"
_PreparedRequest = requests.PreparedRequest
# Routes by the prepared URL's text up to its path (scheme://netloc) and the method: what describe
# reads of a request, so a repeat request skips its regex, its Call and routing.
_ROUTES: RouteMemo[tuple[str, str | None], HTTPRoute | None] = RouteMemo()
_MISS = RouteMemo.MISS


class RequestsCircuitOpenError(CircuitOpenError, requests.exceptions.ConnectionError):
    """An open breaker refused a requests request; it was not sent.

    Both a ``CircuitOpenError`` (``.name``, ``.state``, ``.retry_after``) and a
    ``requests.exceptions.ConnectionError`` (``.request``), so an
    application's ``except requests.RequestException`` handles it as it
    handles a refused connection.
    """

    def __init__(self, name: str, state: CircuitState, retry_after: float | None, *,
                 request: requests.PreparedRequest | None = None) -> None:
        # RequestException.__init__ would hand three arguments to OSError, which reads them
        # as errno and strerror: keep CircuitOpenError's args and set requests' fields.
        Exception.__init__(self, name, state, retry_after)
        self.request = request
        self.response = None

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, CircuitState, float | None]]:
        # The request (hooks, body) need not pickle; the breaker's fields do.
        return (type(self), (self.name, self.state, self.retry_after))


def describe(request: requests.PreparedRequest) -> Call | None:
    """The ``Call`` of a prepared request (target ``scheme://host:port``, as httpx names it), or
    None when its URL has no host or port the client could connect to (requests rejects it)."""
    url = request.url
    origin = _ORIGIN.match(url) if isinstance(url, str) else None
    if url is None or origin is None:
        return None
    scheme, netloc = key = origin[1], origin[2]
    target = _targets.get(key, "")
    if target == "":
        target = _target_of(scheme, netloc)
        if len(_targets) >= _MAX_TARGETS:
            _targets.clear()
        _targets[key] = target
    if target is None:
        return None
    if "@" in netloc:
        url = f"{scheme}://{netloc.rpartition('@')[2]}{url[origin.end():]}"
    return Call(kind="http", target=target, method=request.method or "", url=url, request=request)


def _target_of(scheme: str, netloc: str) -> str | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS.get(scheme, 0)}"


def _not_the_server(exc: BaseException) -> Verdict | None:
    return "ignored" if isinstance(exc, _NOT_THE_SERVER) else None


def _prepare(request: requests.PreparedRequest) -> _Exchange | None:
    try:
        url = request.url
        if url.__class__ is str:
            # The origin ends at the first "/" past "://" (requests gives every prepared URL a path):
            # describe's regex reads nothing past it, so the route is a function of this prefix and
            # the method. A URL with userinfo is described afresh each time, keeping no credentials.
            end = url.find("/", url.find("://") + 3)
            if end > 0 and "@" not in (origin := url[:end]):
                key = (origin, request.method)
                route = _ROUTES.get(key)
                if route is _MISS:
                    route = _ROUTES.remember(key, lambda: route_http(describe(request), "requests"))
                return None if route is None else _Exchange(route, request, url)
        call = describe(request)
        route = route_http(call, "requests")
        if call is None or route is None:
            return None
        return _Exchange(route, request, call.url, call)
    except Exception:
        log_once(("requests", "prepare"), "otel-cb: choosing a breaker for a requests request failed; "
                 "the request goes out unprotected", exc_info=True)
        return None


class _Exchange:
    """One protected hop, from admission to the verdict on its response body.

    ``hook_verdict`` is set with a healthy head, ``cache_key`` and ``size``
    with ``chunks`` kept for the stale cache: only then are they read.
    """

    __slots__ = ("route", "request", "url", "_call", "permit", "hook_verdict", "cache_key", "chunks", "size")

    permit: Permit  # set by admit, before anything reads it

    def __init__(self, route: HTTPRoute, request: requests.PreparedRequest, url: str,
                 call: Call | None = None) -> None:
        self.route = route
        self.request = request
        self.url = url  # without userinfo
        self._call = call
        self.chunks: list[bytes] | None = None

    @property
    def call(self) -> Call:
        """The request as hooks and fallbacks see it, built when first read (most requests never need it)."""
        call = self._call
        if call is None:
            call = self._call = Call("http", self.route.target, self.request.method or "", "", self.url,
                                     self.request)
        return call

    def admit(self, adapter: Any) -> requests.Response | None:
        """Take a permit and mark the current span: None when admitted; else a fallback, or raise."""
        breaker = self.route.breaker
        try:
            self.permit = breaker.acquire()
        except CircuitOpenError as error:
            rejection = RequestsCircuitOpenError(error.name, error.state, error.retry_after, request=self.request)
            annotate_span(breaker, error.state)
            served = self._fallback(adapter, rejection)
            if served is None:
                raise rejection from None
            return served
        annotate_span(breaker, self.permit.state)
        return None

    def failed(self, adapter: Any, exc: BaseException) -> requests.Response:
        """Record what the adapter raised; serve a fallback or re-raise ``exc``."""
        served = None
        try:
            verdict = classify_exception(self.call, self.route.breaker, exc, _not_the_server)
            self.permit.record(verdict)
            if verdict == "failure":
                served = self._fallback(adapter, exc)
        except Exception:
            log_once(("requests", "failed"), "otel-cb: handling a requests error failed", exc_info=True)
        if served is None:
            raise exc
        return served

    def responded(self, response: requests.Response) -> requests.Response:
        """Judge the head; a healthy one waits for its body (on the response, ``_EXCHANGE``)."""
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
                self.cache_key = stale_cache_key(settings.fallback, self.call, status, _credentials)
                if self.cache_key is not None:
                    self.chunks = []
                    self.size = 0
            response._otel_cb_exchange = self  # type: ignore[attr-defined]  # _EXCHANGE
        except Exception:
            log_once(("requests", "responded"), "otel-cb: classifying a requests response failed; counted as "
                     "no verdict", exc_info=True)
            permit.release()
        return response

    def watch(self, response: requests.Response, chunks: Iterator[Any]) -> Iterator[Any]:
        """Yield ``chunks`` (the body, as iter_content gives it); judge the call when they end."""
        try:
            if self.chunks is None:
                yield from chunks
            else:
                for chunk in chunks:
                    if self.chunks is not None:
                        self._keep(chunk)
                    yield chunk
        except GeneratorExit:  # the consumer stopped early: the body says nothing
            self.abandon(response)
            raise
        except BaseException as exc:
            _forget(response)
            if isinstance(exc, Exception):  # cancellation and interrupts are no verdict
                try:
                    self.permit.record(classify_exception(self.call, self.route.breaker, exc, _not_the_server))
                except Exception:
                    log_once(("requests", "body"), "otel-cb: handling a requests body error failed",
                             exc_info=True)
            self.abandon(response)
            raise
        self._complete(response)

    def abandon(self, response: requests.Response) -> None:
        """Closed before its end: no verdict."""
        _forget(response)
        self.chunks = None
        self.permit.release()

    def _keep(self, chunk: Any) -> None:
        cache = self.route.settings.fallback
        self.size += len(chunk)
        if isinstance(chunk, bytes) and isinstance(cache, StaleCache) and self.size <= cache.max_entry_bytes:
            self.chunks.append(chunk)  # type: ignore[union-attr]
        else:  # too big, or decoded to text: not cached
            self.chunks = None

    def _complete(self, response: requests.Response) -> None:
        response._otel_cb_exchange = None  # type: ignore[attr-defined]  # _forget
        permit = self.permit
        chunks = self.chunks
        # A permit ignores any report after its first (an early close released it): only a cache
        # entry needs to know it was this one, so ``permit.done`` (a property) is asked only then.
        if chunks is not None and permit.done:
            return
        if self.hook_verdict:
            permit.record_success()
        else:
            permit.record_result(response)
        if chunks is None:
            return
        cache, key = self.route.settings.fallback, self.cache_key
        self.chunks = None
        if isinstance(cache, StaleCache) and key is not None:
            try:
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
                           if k.lower() not in _NOT_STORED]
                cache.store(key, response.status_code, headers, b"".join(chunks))
            except Exception:
                log_once(("requests", "cache"), "otel-cb: caching a requests response failed", exc_info=True)

    def _fallback(self, adapter: Any, error: BaseException) -> requests.Response | None:
        """A response that serves the call instead of ``error``, counted; None when there is none."""
        return serve_http_fallback(self.call, self.route.breaker, error, requests.Response,
                                   self.route.settings.fallback,
                                   lambda configured, call: _configured_response(adapter, configured, call))


def _pending(response: object) -> _Exchange | None:
    """The exchange waiting for ``response``'s body; None when there is none (or no longer)."""
    exchange = getattr(response, _EXCHANGE, None)
    # A Response subclass's __getattr__ may answer for any name: only our own exchange counts.
    return exchange if exchange.__class__ is _Exchange else None


def _forget(response: requests.Response) -> None:
    response._otel_cb_exchange = None  # type: ignore[attr-defined]  # _EXCHANGE


def _credentials(request: object) -> list[tuple[bytes, bytes]]:
    headers = getattr(request, "headers", None) or {}
    pairs = []
    for name in ("Authorization", "Cookie"):
        value = headers.get(name)
        if value is not None:
            pairs.append((name.lower().encode(), value if isinstance(value, bytes) else str(value).encode("latin-1")))
    return pairs


def _configured_response(adapter: Any, configured: StaleCache | StaticResponse, call: Call) -> requests.Response | None:
    """The static response or the fresh cached one, built by the adapter as it builds any response."""
    if isinstance(configured, StaticResponse):
        headers = [*configured.headers, (FALLBACK_HEADER, configured.kind)]
        return _response(adapter, call, configured.status, headers, configured.body)
    key = configured.key(call.method, call.url, _credentials(call.request))
    entry = configured.lookup(key) if key is not None else None
    if entry is None:
        return None
    status, raw_headers, body, age = entry
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers if k.lower() not in _NOT_REPLAYED]
    headers += [("Content-Length", str(len(body))), (FALLBACK_HEADER, configured.kind), ("Age", str(int(age)))]
    return _response(adapter, call, status, headers, body)


def _response(adapter: Any, call: Call, status: int, headers: list[tuple[str, str]], body: bytes) -> requests.Response:
    try:
        reason: str | None = http.HTTPStatus(status).phrase
    except ValueError:
        reason = None
    raw = HTTPResponse(body=io.BytesIO(body), headers=HTTPHeaderDict(headers), status=status, reason=reason,
                       preload_content=False)
    return adapter.build_response(call.request, raw)  # type: ignore[no-any-return]


# -- the patches -------------------------------------------------------------------------


def patched_send(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``requests.adapters.HTTPAdapter.send``."""
    request = args[0] if args else kwargs.get("request")
    if not isinstance(request, _PreparedRequest):
        return wrapped(*args, **kwargs)
    exchange = _prepare(request)
    if exchange is None:
        return wrapped(*args, **kwargs)
    served = exchange.admit(instance)
    if served is not None:
        return served
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        return exchange.failed(instance, exc)
    return exchange.responded(response)


def patched_iter_content(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``requests.Response.iter_content``: a pending body is judged as it ends."""
    exchange = getattr(instance, _EXCHANGE, None)  # _pending, inlined: every body read passes here
    chunks = wrapped(*args, **kwargs)  # raises at once, as unpatched, for a consumed body or a bad chunk size
    # A Response subclass's __getattr__ may answer for any name: only our own exchange counts.
    return exchange.watch(instance, chunks) if exchange.__class__ is _Exchange else chunks


def patched_close(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """wrapt wrapper of ``requests.Response.close``: a body closed before its end is no verdict."""
    exchange = _pending(instance)
    try:
        return wrapped(*args, **kwargs)
    finally:
        if exchange is not None:
            exchange.abandon(instance)


# Public under its documented home, as tracebacks and reprs show it.
RequestsCircuitOpenError.__module__ = "otel_cb.integrations.requests"
