"""The admin endpoint: a small REST API over the process's breakers, served from one daemon thread.

This module owns the listening socket, its accept thread, the bounded set of
request threads, authentication, rate limiting and the JSON of the API. What
an action does to a breaker is the breaker's business (``force_open()``,
``disable()``, ``reset()``, ``check_health()``) or, fleet-wide,
``otel_cb.shared.fleet_action``.

It uses the standard library only (``http.server`` / ``socketserver``) and
never touches an event loop of the application: every request runs in a
thread of its own, at most ``MAX_CONNECTIONS`` at a time, and a connection
that has not finished after ``CONNECTION_DEADLINE`` seconds is cut off (a
``check-health`` request gets the breaker's ``health_check_timeout`` on top).
"""

from __future__ import annotations

import atexit
import collections
import hmac
import http.server
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from .. import _observers
from .._breaker import CircuitBreaker
from .._registry import registry
from .._state import StateChangeEvent
from ._address import Address, parse_address

__all__ = ["ADDRESS_ENV", "TOKEN_ENV", "AdminServer", "breakers", "start", "start_from_env", "stop"]

logger = logging.getLogger("otel_cb.admin")

ADDRESS_ENV = "OTEL_CB_ADMIN_ADDRESS"
TOKEN_ENV = "OTEL_CB_ADMIN_TOKEN"
MAX_CONNECTIONS = 8  # request threads at once; more connections are answered 503 at once
CONNECTION_DEADLINE = 10.0  # seconds a connection may take, however slowly it trickles
SOCKET_TIMEOUT = 2.0  # seconds any one read or write may wait
MAX_BODY = 4096  # bytes of a request body
RATE = 20.0  # requests per second per peer, in bursts of up to BURST
BURST = 40.0
RECENT_TRANSITIONS = 100
PREFIX = "/v1/circuit-breakers"
ACTIONS = ("force-open", "disable", "reset", "check-health")
_FLEET_ACTIONS = {"force-open": "force_open", "disable": "disable", "reset": "reset"}
_MAX_PEERS = 1024
_REFUSAL_LOG_PERIOD = 60.0


def breakers() -> list[CircuitBreaker]:
    """Every breaker the endpoint shows: ``otel_cb.registry`` and the instrumentation's own registry."""
    from .. import _plugins

    found: dict[str, CircuitBreaker] = {breaker.name: breaker for breaker in registry}
    active = _plugins.active()
    if active is not None and active.registry is not registry:
        for breaker in active.registry:
            found.setdefault(breaker.name, breaker)
    return sorted(found.values(), key=lambda breaker: breaker.name)


class _Transitions:
    """The recent transitions of every breaker, for ``otel-cb top`` (an observer)."""

    def __init__(self) -> None:
        self.items: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_TRANSITIONS)

    def state_changed(self, breaker: CircuitBreaker, event: StateChangeEvent) -> None:
        self.items.append({"time": round(time.time(), 3), "name": event.name, "from": event.previous_state.value,
                           "to": event.state.value, "reason": event.reason.value})

    def health_checked(self, breaker: CircuitBreaker, passed: bool) -> None:
        try:
            _last_checks[breaker] = passed
        except TypeError:  # a breaker that cannot be weakly referenced: no last result shown
            pass


class _Refused(Exception):
    """An answer other than 200: status code, message and extra headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _shown(name: str) -> str:
    """A breaker name as an answer may repeat it: short and printable, else not at all."""
    return repr(name) if len(name) <= 100 and name.isprintable() else "by that name"


def describe(breaker: CircuitBreaker) -> dict[str, Any]:
    """The JSON object of one breaker."""
    snap = breaker.snapshot()
    sync = breaker.shared_state
    shared: dict[str, Any] | None = None
    if sync is not None:
        describe_sync = getattr(sync, "describe", None)
        shared = dict(describe_sync()) if callable(describe_sync) else {"backend": type(sync).__name__}
    return {
        "name": snap.name,
        "state": snap.state.value,
        "failure_rate": round(snap.failure_rate, 4),
        "slow_call_rate": round(snap.slow_call_rate, 4),
        "buffered_calls": snap.buffered_calls,
        "consecutive_failures": snap.consecutive_failures,
        "half_open_calls": snap.half_open_calls,
        "retry_after": None if snap.retry_after is None else round(snap.retry_after, 3),
        "calls": dict(snap.calls),
        "slow_calls": dict(snap.slow_calls),
        "fallbacks": dict(snap.fallbacks),
        "time_in_state": {state.value: round(seconds, 3) for state, seconds in snap.time_in_state.items()},
        "shared_state": shared,
        "health_check": _health_of(breaker, snap.health_checks),
    }


# The last health check result per breaker, kept by the endpoint's observer
# (the breaker counts passes and failures, not which came last).
_last_checks: weakref.WeakKeyDictionary[CircuitBreaker, bool] = weakref.WeakKeyDictionary()


def _health_of(breaker: CircuitBreaker, counts: Mapping[str, int]) -> dict[str, Any] | None:
    """``health_check`` of a listed breaker: None without a check, else its last result and counts."""
    if breaker.health_check is None:
        return None
    return {"attached": True, "last_passed": _last_checks.get(breaker),
            "passed": int(counts.get("passed", 0)), "failed": int(counts.get("failed", 0)),
            "timeout": breaker.config.health_check_timeout}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "otel-cb"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers
    timeout = SOCKET_TIMEOUT

    # -- plumbing ----------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are not logged (their paths could be anything); operator actions are, below.
        return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, oversized headers): JSON, without echoing input.
        self._answer(code, {"error": http.server.BaseHTTPRequestHandler.responses.get(code, ("error",))[0]})

    def _peer(self) -> str:
        if self.server.address.path:
            try:
                creds = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, uid, _ = struct.unpack("3i", creds)
                return f"unix socket (pid {pid}, uid {uid})"
            except (OSError, AttributeError):
                return "unix socket"
        host, port = self.client_address[:2]
        return f"{host}:{port}"

    def _answer(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client went away; nothing of ours is at stake
        self.close_connection = True

    def _serve(self, method: str) -> None:
        try:
            self.server.limit(self._peer_host())
            status, body = self._route(method)
            self._answer(status, body)
        except _Refused as refusal:
            self._answer(refusal.status, {"error": refusal.message}, refusal.headers)
        except Exception:
            logger.exception("otel-cb admin endpoint failed on a request; it carries on")
            self._answer(500, {"error": "internal error; see the application's log"})

    def _peer_host(self) -> str:
        return "unix" if self.server.address.path else str(self.client_address[0])

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    # -- the API ------------------------------------------------------------------------

    def _route(self, method: str) -> tuple[int, dict[str, Any]]:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path.rstrip("/") == PREFIX:
            self._allow(method, "GET")
            self._authenticate(mutating=False)
            self._body()
            return 200, {"pid": os.getpid(), "breakers": [describe(breaker) for breaker in breakers()],
                         "transitions": list(self.server.transitions.items)}
        if not path.startswith(PREFIX + "/"):
            raise _Refused(404, f"no such endpoint; the API is under {PREFIX}")
        parts = path[len(PREFIX) + 1:].split("/")
        if len(parts) > 2 or not parts[0] or (len(parts) == 2 and parts[1] not in ACTIONS):
            raise _Refused(404, f"no such endpoint; use {PREFIX}/NAME or {PREFIX}/NAME/ACTION with ACTION one of "
                                f"{', '.join(ACTIONS)} (NAME URL-encoded)")
        try:
            name = unquote(parts[0], errors="strict") if "%" in parts[0] else parts[0]
        except UnicodeDecodeError:
            raise _Refused(400, "breaker name: not URL-encoded UTF-8") from None
        if len(parts) == 1:
            self._allow(method, "GET")
            self._authenticate(mutating=False)
            self._body()
            return 200, describe(self._breaker(name))
        action = parts[1]
        self._allow(method, "POST")
        self._authenticate(mutating=True)
        options = self._body()
        fleet = options.get("fleet", False)
        if not isinstance(fleet, bool):
            raise _Refused(400, f"fleet: {str(fleet)[:30]!r} is not allowed; use true or false")
        breaker = self._breaker(name)
        return self._act(breaker, action, fleet)

    def _allow(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise _Refused(405, f"method {method} is not allowed here; use {allowed}", {"Allow": allowed})

    def _authenticate(self, *, mutating: bool) -> None:
        token = self.server.token
        if token is None:
            if mutating:
                raise _Refused(403, f"actions need a token: start the application with {TOKEN_ENV} set")
            return
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())):
            if self.server.should_log_refusal(self._peer_host()):
                logger.warning("otel-cb admin: request from %s refused: missing or wrong token (logged once a "
                               "minute per peer)", self._peer())
            raise _Refused(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def _body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(400, "Transfer-Encoding is not supported; send a body with Content-Length")
        length_text = self.headers.get("Content-Length", "0").strip() or "0"
        if not length_text.isdigit():
            raise _Refused(400, "Content-Length: not a number of bytes")
        length = int(length_text)
        if length > MAX_BODY:
            raise _Refused(413, f"request body too large; at most {MAX_BODY} bytes")
        if length == 0:
            return {}
        try:
            data = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise _Refused(400, "request body: not JSON; send a JSON object such as {\"fleet\": true}") from None
        except OSError:
            raise _Refused(400, "request body: incomplete") from None
        if not isinstance(data, dict):
            raise _Refused(400, "request body: not a JSON object; send {} or {\"fleet\": true}")
        unknown = sorted(str(key)[:30] for key in data if key != "fleet")
        if unknown:
            raise _Refused(400, f"request body: unknown field {unknown[0]!r}; allowed: fleet")
        return data

    def _breaker(self, name: str) -> CircuitBreaker:
        for breaker in breakers():
            if breaker.name == name:
                return breaker
        # Not repeated: whatever a caller put there (a URL, a password) stays out of answers.
        raise _Refused(404, f"no circuit breaker by that name; GET {PREFIX} lists them")

    def _act(self, breaker: CircuitBreaker, action: str, fleet: bool) -> tuple[int, dict[str, Any]]:
        where = "every process of the fleet" if fleet else "this process"
        peer = self._peer()
        if action == "check-health":
            return self._check_health(breaker, peer)
        try:
            if fleet:
                from ..shared import fleet_action

                fleet_action(breaker, _FLEET_ACTIONS[action])  # type: ignore[arg-type]
            elif action == "force-open":
                breaker.force_open()
            elif action == "disable":
                breaker.disable()
            else:
                breaker.reset()
        except ValueError as exc:  # no fleet-capable shared state
            logger.warning("otel-cb admin: %s of circuit breaker %r (%s) by %s: refused: %s",
                           action, breaker.name, where, peer, exc)
            raise _Refused(409, str(exc)) from None
        except ConnectionError as exc:
            logger.warning("otel-cb admin: %s of circuit breaker %r (%s) by %s: failed: %s",
                           action, breaker.name, where, peer, exc)
            raise _Refused(503, str(exc)) from None
        state = breaker.state.value
        logger.warning("otel-cb admin: %s of circuit breaker %r (%s) by %s: done, now %s",
                       action, breaker.name, where, peer, state)
        return 200, {"name": breaker.name, "action": action, "fleet": fleet, "state": state}

    def _check_health(self, breaker: CircuitBreaker, peer: str) -> tuple[int, dict[str, Any]]:
        """Run the breaker's check in this request thread: a coroutine check runs on the health
        monitor's loop, never the application's; either way bounded by ``health_check_timeout``."""
        # The check may run longer than a request may: give this connection its timeout on top.
        self.server.extend_deadline(self.request, breaker.config.health_check_timeout)
        try:
            passed = breaker.check_health()
        except ValueError:  # detached since the request came in, or never attached
            logger.warning("otel-cb admin: check-health of circuit breaker %r by %s: refused: no health check "
                           "attached", breaker.name, peer)
            raise _Refused(409, f"no health check is attached to circuit breaker {_shown(breaker.name)}") from None
        state = breaker.state.value
        logger.warning("otel-cb admin: check-health of circuit breaker %r by %s: %s, now %s", breaker.name, peer,
                       "passed" if passed else "failed", state)
        return 200, {"name": breaker.name, "passed": passed, "state": state}


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Threads per request, bounded; connections past their deadline cut off between polls."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: Address, token: str | None, transitions: _Transitions) -> None:
        self.address = address
        self.token = token
        self.transitions = transitions
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: dict[int, tuple[float, socket.socket]] = {}
        self._open_lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._buckets_lock = threading.Lock()
        self._refusals_logged: dict[str, float] = {}
        if address.path:
            self.address_family = socket.AF_UNIX
            target: Any = address.path
            _remove_stale_socket(address.path)
        else:
            self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            target = (address.host, address.port)
        super().__init__(target, _Handler)

    def server_bind(self) -> None:
        super().server_bind()
        if self.address.path:
            os.chmod(self.address.path, stat.S_IRUSR | stat.S_IWUSR)  # the application's user only

    def get_request(self) -> tuple[socket.socket, Any]:
        request, client = self.socket.accept()
        if self.address.path:
            client = ("", 0)
        return request, client

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _busy(request)
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[id(request)] = (time.monotonic() + CONNECTION_DEADLINE, request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def extend_deadline(self, request: Any, seconds: float) -> None:
        """Let ``request``'s connection take ``seconds`` longer than ``CONNECTION_DEADLINE``."""
        with self._open_lock:
            if id(request) in self._open:
                deadline, sock = self._open[id(request)]
                self._open[id(request)] = (deadline + seconds, sock)

    def _done(self, request: Any) -> None:
        with self._open_lock:
            if self._open.pop(id(request), None) is not None:
                self._slots.release()

    def service_actions(self) -> None:
        # Called by serve_forever between polls: cut off connections past their deadline.
        now = time.monotonic()
        with self._open_lock:
            late = [sock for deadline, sock in self._open.values() if deadline < now]
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def should_log_refusal(self, peer: str) -> bool:
        """True at most once a minute per peer: a client guessing tokens cannot flood the log."""
        now = time.monotonic()
        with self._buckets_lock:
            if now - self._refusals_logged.get(peer, -_REFUSAL_LOG_PERIOD) < _REFUSAL_LOG_PERIOD:
                return False
            if len(self._refusals_logged) >= _MAX_PEERS:
                self._refusals_logged.clear()
            self._refusals_logged[peer] = now
            return True

    def limit(self, peer: str) -> None:
        """Spend one request of ``peer``'s budget, or refuse with 429."""
        now = time.monotonic()
        with self._buckets_lock:
            tokens, then = self._buckets.pop(peer, (BURST, now))
            tokens = min(BURST, tokens + (now - then) * RATE)
            if tokens < 1:
                self._buckets[peer] = (tokens, now)
                raise _Refused(429, "too many requests; slow down", {"Retry-After": "1"})
            self._buckets[peer] = (tokens - 1, now)
            while len(self._buckets) > _MAX_PEERS:
                self._buckets.popitem(last=False)


def _busy(request: socket.socket) -> None:
    body = b'{"error":"too many connections; try again"}'
    try:
        request.settimeout(0.1)
        request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass


def _remove_stale_socket(path: str) -> None:
    """Remove a unix socket left by a dead process; a live one is left alone (bind then fails)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.2)
        probe.connect(path)
    except OSError:
        try:
            os.unlink(path)
        except OSError:
            pass
    finally:
        probe.close()


class AdminServer:
    """A running admin endpoint; ``close()`` stops it (it also ends with the process)."""

    def __init__(self, address: Address, token: str | None, template: str | None,
                 transitions: _Transitions | None = None) -> None:
        self._transitions = transitions or _Transitions()
        self._server = _Server(address, token, self._transitions)
        self.template = template
        self.token = token
        host_port = self._server.server_address
        self.address = address if address.path else Address(host=address.host, port=int(host_port[1]))
        if transitions is None:
            _observers.add_observer(self._transitions)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="otel-cb-admin", daemon=True)
        self._thread.start()
        _servers.add(self)

    def close(self) -> None:
        """Stop serving and release the address."""
        _observers.remove_observer(self._transitions)
        _servers.discard(self)
        self._server.shutdown()
        self._release()

    def _release(self) -> None:
        self._server.server_close()
        if self.address.path:
            try:
                os.unlink(self.address.path)
            except OSError:
                pass

    def _abandon_after_fork(self) -> None:
        # In a forked child: the parent's thread is gone and the address is the parent's. The
        # observer stays registered (taking the observers' lock here could wait for a thread
        # that exists only in the parent); a server restarted in the child reuses it.
        _servers.discard(self)
        try:
            self._server.socket.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"<AdminServer {self.address}>"


_servers: weakref.WeakSet[AdminServer] = weakref.WeakSet()
_lock = threading.Lock()
_default: AdminServer | None = None
_logged: set[str] = set()


def _log_once(key: str, level: int, message: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.log(level, message, *args)


def start(address: str, *, token: str | None = None) -> AdminServer | None:
    """Serve the admin endpoint at ``address``; None (logged once) when it cannot.

    Args:
        address: ``PORT``, ``HOST:PORT``, ``[IPV6]:PORT`` or a unix socket path
            (``unix:/path``); ``{pid}`` is replaced by the process id, and a
            process forked later serves on its own address when ``{pid}`` is
            part of it.
        token: The bearer token every request must carry; without one the
            endpoint starts only on loopback or a unix socket, read-only.

    Raises:
        ValueError: ``address`` cannot be parsed.
    """
    return _start(address, token)


def _start(address: str, token: str | None, transitions: _Transitions | None = None) -> AdminServer | None:
    parsed = parse_address(address)
    if token is not None and not token.strip():
        token = None
    if token is None and not parsed.is_local:
        _log_once(f"token:{parsed.host}", logging.ERROR,
                  "otel-cb admin endpoint not started: %s is not loopback and %s is not set", parsed, TOKEN_ENV)
        return None
    try:
        server = AdminServer(parsed, token, address if "{pid}" in address else None, transitions)
    except OSError as exc:
        _log_once(f"bind:{parsed}", logging.WARNING, "otel-cb admin endpoint not started: cannot listen on %s "
                  "(%s); the application runs without it", parsed, exc.strerror or type(exc).__name__)
        return None
    logger.info("otel-cb admin endpoint listening on %s", server.address)
    return server


def start_from_env(environ: Mapping[str, str] | None = None) -> AdminServer | None:
    """Start the process's endpoint from ``OTEL_CB_ADMIN_ADDRESS`` / ``OTEL_CB_ADMIN_TOKEN`` (the
    bootstrap calls this); None when the variable is unset or the endpoint cannot start. Never raises."""
    global _default
    env = os.environ if environ is None else environ
    address = env.get(ADDRESS_ENV, "").strip()
    if not address:
        return None
    with _lock:
        if _default is not None:
            return _default
        try:
            _default = start(address, token=env.get(TOKEN_ENV))
        except ValueError as exc:
            _log_once("address", logging.ERROR, "otel-cb admin endpoint not started: %s", exc)
        except Exception:
            logger.error("otel-cb admin endpoint not started", exc_info=True)
        return _default


def stop() -> None:
    """Stop the endpoint ``start_from_env()`` started, if any."""
    global _default
    with _lock:
        server, _default = _default, None
    if server is not None:
        server.close()


def _servers_of_parent() -> Iterable[AdminServer]:
    return list(_servers)


def _after_fork_in_child() -> None:
    global _default, _lock
    _lock = threading.Lock()  # the parent may have held it while forking
    restart = [server for server in _servers_of_parent() if server.template is not None]
    was_default = _default
    _default = None
    for server in _servers_of_parent():
        server._abandon_after_fork()
    for server in restart:
        assert server.template is not None
        try:
            new = _start(server.template, server.token, server._transitions)
        except Exception:  # pragma: no cover - parsed once already
            new = None
        if server is was_default:
            _default = new


@atexit.register
def _remove_sockets_at_exit() -> None:
    # Only the file: exit must not wait for the accept thread.
    for server in list(_servers):
        if server.address.path:
            try:
                os.unlink(server.address.path)
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
