"""HTTP policy shared by every HTTP integration (httpx, requests), free of any client library.

Owns how an HTTP response counts (``judge_head``: the hooks, else
``status_verdict``: 429 and 5xx are failures, other statuses successes,
unless ``failure_statuses`` says otherwise; ``retry_after_hint``: the
``Retry-After`` of a failing 429/503),
the per-breaker HTTP settings (``failure_statuses``, ``fallback``,
``health_check``), their validation, their per-breaker cache (``settings_of``), the stale-response
cache and the order fallbacks are tried in (``serve_http_fallback``). The
httpx and requests modules turn these plain values into their clients'
requests and responses; a breaker both clients use has one set of settings
and one stale cache. ``Machinery`` is how both plugin modules load their
client-specific half only when the client is in use.
"""

from __future__ import annotations

import email.utils
import hashlib
import importlib
import re
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import TYPE_CHECKING, Any, TypeVar

from ..plugin import (
    Call,
    Verdict,
    classify,
    log_once,
    parse_duration,
    parse_items,
    section_settings,
    serve_fallback,
)

if TYPE_CHECKING:
    from .. import CircuitBreaker, Permit

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "RETRY_AFTER_STATUSES",
    "HTTPHealthCheck",
    "HTTPSettings",
    "Machinery",
    "judge_head",
    "serve_http_fallback",
    "stale_cache_key",
    "StaleCache",
    "StaticResponse",
    "parse_failure_statuses",
    "parse_fallback",
    "parse_health_check",
    "parse_retry_after",
    "parse_settings",
    "retry_after_hint",
    "settings_of",
    "status_verdict",
    "validate_settings",
]

R = TypeVar("R")

DEFAULT_FAILURE_STATUSES = frozenset([429, *range(500, 600)])
RETRY_AFTER_STATUSES = frozenset({429, 503})
_STATUS_RANGE = re.compile(r"^\s*([1-5])xx\s*$|^\s*(\d{3})\s*-\s*(\d{3})\s*$")
_STATUSES_ALLOWED = "a list of status codes (100-599), 'Nxx' classes or 'A-B' ranges, e.g. [429, '5xx']"
# Never replayed from the cache: a replayed POST could repeat a side effect the caller
# believes did not happen, and HEAD/OPTIONS answers are not worth their memory.
CACHEABLE_METHODS = frozenset({"GET"})
MAX_ENTRY_BYTES = 1 << 20


def parse_failure_statuses(where: str, value: object) -> frozenset[int]:
    """Parse a ``failure_statuses`` value such as ``[429, "5xx", "520-530"]``.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    return parse_items(where, value, _statuses, _STATUSES_ALLOWED)


def _statuses(item: object) -> range | None:
    if isinstance(item, int) and not isinstance(item, bool):
        return range(item, item + 1) if 100 <= item <= 599 else None
    match = _STATUS_RANGE.match(item) if isinstance(item, str) else None
    if match is None:
        return None
    if match.group(1):
        low = int(match.group(1)) * 100
        return range(low, low + 100)
    low, high = int(match.group(2)), int(match.group(3))
    return range(low, high + 1) if 100 <= low <= high <= 599 else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta-seconds or an HTTP-date; None if unusable.

    Args:
        value: The header value.
        now: Wall-clock seconds since the epoch that an HTTP-date is compared
            with (``time.time()`` when None).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass(slots=True)
class _Entry:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float


class StaleCache:
    """The last successful response to each GET, kept to serve while its dependency is down.

    Keys are method, URL and a digest of the credentials the request carried
    (``Authorization``, ``Cookie``), so one caller's response is never replayed
    to a caller with other credentials; credentials themselves are not stored.
    Memory is bounded: at most ``max_entries`` responses (least recently used
    go first) of at most ``max_entry_bytes`` each; older than ``ttl`` seconds
    is never served.
    """

    kind = "stale-cache"

    def __init__(self, *, ttl: float, max_entries: int, max_entry_bytes: int = MAX_ENTRY_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str, bytes], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(method: str, url: str, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str, bytes] | None:
        """The cache key of a request, or None when its method is never cached."""
        if method not in CACHEABLE_METHODS:
            return None
        digest = hashlib.blake2b(digest_size=16)
        for name, value in headers:
            if name.lower() in (b"authorization", b"cookie"):
                digest.update(name.lower() + b"\0" + value + b"\0")
        return method, url, digest.digest()

    def store(self, key: tuple[str, str, bytes], status: int, headers: list[tuple[bytes, bytes]],
              body: bytes) -> None:
        if len(body) > self.max_entry_bytes:
            return
        entry = _Entry(status, headers, body, self._clock())
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def lookup(self, key: tuple[str, str, bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes, float] | None:
        """Return ``(status, headers, body, age_seconds)`` of a fresh enough entry, else None."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            age = now - entry.stored_at
            if age > self.ttl:
                del self._entries[key]
                return None
        return entry.status, entry.headers, entry.body, max(0.0, age)


@dataclass(frozen=True, slots=True)
class StaticResponse:
    """A fixed response served instead of the real one (``fallback: {type: static, ...}``)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    kind: str = "static"


_FALLBACK_ALLOWED = (
    "{type: stale_cache, ttl: '5m', max_entries: 1000} or "
    "{type: static, status: 503, json: {...} | body: '...', headers: {...}}"
)
_FALLBACK_KEYS = {"stale_cache": {"type", "ttl", "max_entries", "max_entry_bytes"},
                  "static": {"type", "status", "json", "body", "headers"}}


def parse_fallback(where: str, value: object, *,
                   clock: Callable[[], float] = time.monotonic) -> StaleCache | StaticResponse:
    """Build the fallback a ``fallback:`` mapping describes.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str) or value["type"] not in _FALLBACK_KEYS:
        raise ValueError(f"{where}: {value!r} is not allowed; use {_FALLBACK_ALLOWED}")
    kind = value["type"]
    unknown = sorted(set(value) - _FALLBACK_KEYS[kind])
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: {value[unknown[0]]!r} is not allowed; "
                         f"a {kind} fallback takes {', '.join(sorted(_FALLBACK_KEYS[kind]))}")
    if kind == "stale_cache":
        ttl = parse_duration(f"{where}.ttl", value.get("ttl", 300.0))
        if ttl <= 0:
            raise ValueError(f"{where}.ttl: {value.get('ttl')!r} is not allowed; use a positive duration")
        limits = {}
        for name, default in (("max_entries", 1000), ("max_entry_bytes", MAX_ENTRY_BYTES)):
            number = value.get(name, default)
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError(f"{where}.{name}: {number!r} is not allowed; use a whole number >= 1")
            limits[name] = number
        return StaleCache(ttl=ttl, clock=clock, **limits)
    status = value.get("status", 503)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError(f"{where}.status: {status!r} is not allowed; use an HTTP status code, 100-599")
    headers_value = value.get("headers", {})
    if not isinstance(headers_value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers_value.items()):
        raise ValueError(f"{where}.headers: {headers_value!r} is not allowed; use a mapping of strings to strings")
    headers = list(headers_value.items())
    if "json" in value and "body" in value:
        raise ValueError(f"{where}: {value!r} is not allowed; give either json or body, not both")
    if "json" in value:
        import json

        try:
            body = json.dumps(value["json"]).encode()
        except (TypeError, ValueError):
            raise ValueError(f"{where}.json: {value['json']!r} is not allowed; use JSON-serialisable data") from None
        headers.append(("Content-Type", "application/json"))
    else:
        text = value.get("body", "")
        if not isinstance(text, str):
            raise ValueError(f"{where}.body: {text!r} is not allowed; use a string")
        body = text.encode()
    return StaticResponse(status, tuple(headers), body)


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    """The HTTP settings of one breaker, parsed."""

    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES
    fallback: StaleCache | StaticResponse | None = field(default=None, compare=False)
    health_check: HTTPHealthCheck | None = None


@dataclass(frozen=True)
class HTTPHealthCheck:
    """A breaker's ``health_check: {path: /healthz, expect: 2xx}``: GET ``path`` on the call's origin."""

    path: str
    expect: frozenset[int] = frozenset(range(200, 300))


_HEALTH_KEYS = frozenset({"path", "expect"})
_HEALTH_ALLOWED = "a mapping {path: /healthz, expect: 2xx}"
_MAX_PATH = 2048


def parse_health_check(where: str, value: object) -> HTTPHealthCheck:
    """Parse a ``health_check`` mapping: ``path`` (required, from ``/``), ``expect`` (``2xx`` by default).

    ``expect`` is a status class (``"2xx"``), a range (``"200-204"``), a code,
    or a list of them.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {value!r} is not allowed; use {_HEALTH_ALLOWED}")
    unknown = sorted(str(key) for key in set(value) - _HEALTH_KEYS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: is not allowed; a health_check takes expect, path")
    path = value.get("path")
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//") or len(path) > _MAX_PATH \
            or not path.isprintable() or " " in path:
        # The path is not repeated: it may carry a token in its query.
        raise ValueError(f"{where}.path: is not allowed; use a path on the breaker's origin such as /healthz "
                         f"(from '/', printable, at most {_MAX_PATH} characters)")
    expect = value.get("expect", "2xx")
    items = [expect] if isinstance(expect, (str, int)) else expect
    return HTTPHealthCheck(path, parse_items(f"{where}.expect", items, _statuses,
                                             "a status class ('2xx'), a range ('200-204'), a code, or a list"))


def parse_settings(name: str, section: Mapping[str, Any], *,
                   clock: Callable[[], float] = time.monotonic) -> HTTPSettings:
    """Parse the HTTP keys of breaker ``name``'s config section (other keys are left alone)."""
    # Field names relative to the section: the config loader prefixes the section's location.
    statuses = DEFAULT_FAILURE_STATUSES
    if section.get("failure_statuses") is not None:
        statuses = parse_failure_statuses("failure_statuses", section["failure_statuses"])
    fallback = None
    if section.get("fallback") is not None:
        fallback = parse_fallback("fallback", section["fallback"], clock=clock)
    health = None
    if section.get("health_check") is not None:
        health = parse_health_check("health_check", section["health_check"])
    return HTTPSettings(statuses, fallback, health)


_DEFAULT_SETTINGS = HTTPSettings()


def _parse_section(breaker: CircuitBreaker, section: Mapping[str, Any]) -> HTTPSettings:
    # The stale cache ages by the breaker's clock, so tests move both with one fake clock.
    return parse_settings(breaker.name, section, clock=breaker.clock)


def settings_of(breaker: CircuitBreaker) -> HTTPSettings:
    """The HTTP settings of ``breaker``'s config section, parsed once per section for every HTTP client."""
    return section_settings(breaker, _parse_section, _DEFAULT_SETTINGS)


def validate_settings(name: str, section: Mapping[str, Any]) -> None:
    """Check the HTTP keys of breaker ``name``'s config section; the config loader calls this.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    parse_settings(name, section)


def status_verdict(status: int, failure_statuses: frozenset[int]) -> Verdict:
    """How a response counts when no ``otel_cb_classify`` hook answered.

    A status in ``failure_statuses`` (429 and 5xx unless the breaker's config
    says otherwise) is a failure of the server; every other status, 4xx
    included, is a success: the server answered, the request was what failed.
    """
    return "failure" if status in failure_statuses else "success"


def retry_after_hint(status: int, header: str | None) -> float | None:
    """Seconds a failing 429 or 503 asks the client to wait (its ``Retry-After``); None for other statuses."""
    return parse_retry_after(header) if status in RETRY_AFTER_STATUSES else None


def judge_head(call: Call | None, permit: Permit, response: object, status: int, headers: Mapping[str, str],
               failure_statuses: frozenset[int]) -> bool | None:
    """Judge a response head for every HTTP client: the ``otel_cb_classify`` hooks, else the status.

    A verdict other than success is recorded on ``permit`` at once (a failing
    429/503 with its ``Retry-After``) and None is returned. A healthy head
    leaves the permit to the body's end and returns whether a hook decided
    (then the body's end records a plain success, without ``is_failure_result``).

    Args:
        call: The call, as the hooks see it; None when no ``otel_cb_classify`` hook listens
            (``listening``), so a client need not build it: the status decides.
        permit: Its permit.
        response: The client's response object, for the hooks.
        status: Its status code.
        headers: Its headers (``.get("retry-after")`` is read on a failure only).
        failure_statuses: The breaker's failing statuses.
    """
    if call is None:
        if status not in failure_statuses:
            return False  # the usual head: healthy, no hook to ask, nothing to record yet
        verdict: Verdict | None = None
    else:
        verdict = classify(call, response, None)
    hooked = verdict is not None
    if verdict is None:
        verdict = status_verdict(status, failure_statuses)
    if verdict == "success":
        return hooked
    retry_after = retry_after_hint(status, headers.get("retry-after")) if verdict == "failure" else None
    permit.record(verdict, retry_after=retry_after)
    return None


def stale_cache_key(fallback: object, call: Call, status: int,
                    credentials: Callable[[object], Iterable[tuple[bytes, bytes]] | None],
                    ) -> tuple[str, str, bytes] | None:
    """The key a healthy response of ``call`` is kept under by a stale-cache fallback, for every HTTP client.

    None when the fallback is no stale cache, the status no 2xx, the method never
    cached, or ``credentials(call.request)`` (the client's Authorization and Cookie
    headers, read only when needed) is None.
    """
    if not isinstance(fallback, StaleCache) or not 200 <= status < 300:
        return None
    headers = credentials(call.request)
    return None if headers is None else fallback.key(call.method, call.url, headers)


def serve_http_fallback(call: Call, breaker: CircuitBreaker, error: BaseException, accept: type[R],
                        configured: StaleCache | StaticResponse | None,
                        build: Callable[[StaleCache | StaticResponse, Call], R | None]) -> R | None:
    """What an HTTP client hands the caller instead of ``error``: counted; None lets ``error`` propagate.

    An ``otel_cb_fallback`` hook's ``accept`` answer wins; else the breaker's
    ``configured`` fallback, which ``build`` turns into the client's response
    (None: the stale cache has no fresh entry, counted as a ``failure``). A
    fallback that raises is logged once and counted as a ``failure``.
    """
    try:
        value = serve_fallback(call, breaker, error, accept)
        if value is not None:
            return value  # type: ignore[return-value]
        if configured is None:
            return None
        response = build(configured, call)
    except Exception:
        log_once(("http", "fallback", accept.__module__), "otel-cb: an HTTP fallback (%s) failed; the error "
                 "propagates", accept.__module__.partition(".")[0], exc_info=True)
        breaker.count_fallback("failure")
        return None
    breaker.count_fallback("success" if response is not None else "failure")
    return response


class Machinery:
    """The client-specific half of an HTTP integration, imported on first use.

    The plugin modules are loaded at every start-up whether or not the
    application uses their client, and importing the client costs tens of
    milliseconds: they name their public classes here, and the module (which
    imports the client) loads when one is first used. Their patches name
    their wrappers (``Patch(..., "module:function", ...)``), which the engine
    imports on the first patched call.

    Args:
        module: The absolute name of the module, e.g. ``"otel_cb.integrations._http_transport"``.
    """

    __slots__ = ("_name", "_module")

    def __init__(self, module: str) -> None:
        self._name = module
        self._module: types.ModuleType | None = None

    def load(self) -> types.ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def attribute(self, owner: str, names: frozenset[str], name: str) -> Any:
        """The ``__getattr__`` of plugin module ``owner``: one of ``names`` from the module, loaded now."""
        if name in names:
            return getattr(self.load(), name)
        raise AttributeError(f"module {owner!r} has no attribute {name!r}")
