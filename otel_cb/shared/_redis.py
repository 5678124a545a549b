"""`RedisSharedState`: one breaker state for a whole fleet of processes, kept on Redis.

This module owns the I/O: two background threads per ``RedisSharedState``
(one flushes outcomes and publishes transitions, one listens for the fleet's
messages), the Redis clients, and the fallback to local state. The rules
themselves stay in the breaker (``otel_cb._breaker``) and in the Lua scripts
(``_scripts``); this module only carries outcomes and states between them.

What happens on a breaker's call path:

- closed: ``on_outcome`` appends one code to an in-memory queue (no Redis
  round trip); the worker thread flushes the queue every ``flush_interval``
  as one pipelined script call per breaker;
- half-open: ``acquire_probe`` takes a fleet-wide lease, one round trip bounded
  by ``timeout``;
- open: nothing (the breaker rejects locally).

Faults of any kind are contained here: the breaker never sees a Redis
exception. The first failure switches every attached breaker to its local
state and logs one warning; the worker pings Redis every ``retry_interval``
and, when it answers, publishes what happened locally meanwhile, reads the
fleet's state and logs that it is back.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from .. import _observers
from .._breaker import CircuitBreaker
from .._state import CircuitState, Reason, StateChangeEvent
from . import _scripts

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisSharedState", "running_locally"]

logger = logging.getLogger("otel_cb.shared")

_OPEN = CircuitState.OPEN
_CLOSED = CircuitState.CLOSED
_HALF_OPEN = CircuitState.HALF_OPEN
_LOCAL_ONLY = (CircuitState.FORCED_OPEN, CircuitState.DISABLED)
_KEY_TTL_MS = 24 * 3600 * 1000  # a breaker nobody uses any more leaves no keys behind
_MAX_QUEUED = 100_000  # outcomes kept while a flush is late; older ones are dropped


_backends: weakref.WeakSet[RedisSharedState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A worker forked from a master that attached breakers (gunicorn --preload)
    # inherits the backends but not their threads: give it threads of its own.
    for backend in list(_backends):
        backend._reset_after_fork()


@atexit.register
def _close_at_exit() -> None:
    # Send a trip that happened just before the process ends, rather than lose it.
    for backend in list(_backends):
        backend.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


def running_locally(breaker: CircuitBreaker) -> bool:
    """True when ``breaker`` has shared state attached but runs on its local state
    because Redis is unreachable. False for a breaker without shared state.

    Telemetry reads this; observers also get ``shared_state_changed(breaker,
    running_locally)`` whenever it flips.
    """
    return bool(getattr(breaker.shared_state, "running_locally", False))


class RedisSharedState:
    """Shares the state of breakers across processes through one Redis.

    One instance serves any number of breakers in one namespace: it holds one
    connection pool for the call path, one for background work and one
    pub/sub subscription. Every process that attaches a breaker with the same
    name to the same Redis and namespace sees one state.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL; credentials in it
            are never logged.
        namespace: Separates fleets sharing one Redis; breakers with the same
            name in different namespaces never interfere.
        client: Instead of ``url``: a ``redis.Redis``, used for everything as it
            is (its socket timeout is then the call-path budget), or a
            ``redis.asyncio.Redis``, whose server, credentials and TLS settings
            are reused by sync connections in the background threads.
        timeout: Budget in seconds of the one Redis round trip a call can make
            (a half-open probe lease); also the socket timeout of that client.
        flush_interval: How long closed-state outcomes are batched before they
            are sent.
        sync_interval: How often the fleet's state is read even without a
            message, so a lost message is caught within this bound.
        probe_lease: How long a half-open probe lease lives; a prober that dies
            holds its slot at most this long.
        retry_interval: How often an unreachable Redis is tried again.
        cluster: Talk to a Redis Cluster (``url`` names any one of its nodes);
            implied by a ``redis+cluster://`` or ``rediss+cluster://`` URL.

    Use ``attach(breaker)``; ``close()`` (or ``with``) stops the threads.
    """

    # A redis.Redis or a redis.cluster.RedisCluster, and their scripts.
    _fast: Any
    _slow: Any
    _read: Any
    _open: Any
    _close: Any
    _record: Any
    _manual: Any
    _acquire: Any
    _owns_clients: bool

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "default",
        client: redis.Redis | redis.asyncio.Redis | None = None,
        timeout: float = 0.05,
        flush_interval: float = 0.005,
        sync_interval: float = 1.0,
        probe_lease: float = 10.0,
        retry_interval: float = 0.5,
        cluster: bool = False,
    ) -> None:
        import redis

        from ._config import check_settings

        check_settings(url=url, namespace=namespace, has_client=client is not None, timeout=timeout,
                       flush_interval=flush_interval, sync_interval=sync_interval,
                       probe_lease=probe_lease, retry_interval=retry_interval)
        self.namespace = namespace
        self.timeout = timeout
        self.flush_interval = flush_interval
        self.sync_interval = sync_interval
        self.probe_lease = probe_lease
        self.retry_interval = retry_interval
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._url = url
        self._client = client
        self.cluster = cluster or (url is not None and urlsplit(url).scheme.endswith("+cluster"))
        if self.cluster:
            from redis.exceptions import RedisClusterException

            self._errors = (*self._errors, RedisClusterException)  # not a RedisError, yet Redis's fault
        self._make_clients(own=not isinstance(client, redis.Redis))
        self.where = _describe_url(url) if self.cluster else _describe(self._slow)
        self.channel = f"otel_cb:{namespace}:events"
        self._instance = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lease_ids = itertools.count()
        self._links: dict[str, _Link] = {}
        self._links_lock = threading.Lock()
        self._wake = threading.Event()
        self._up = threading.Event()
        self._up.set()
        self._armed = False
        self._down = False
        self._failure = ""  # the exception type that started the current outage
        self._poll_requested = True
        self._closed = False
        self._threads: list[threading.Thread] = []
        _backends.add(self)

    def _make_clients(self, *, own: bool) -> None:
        """Build the clients and register the scripts: at construction, and in a forked
        child, whose inherited pools may hold locks that a thread of the parent took."""
        self._owns_clients = own
        self._connected = threading.Event()
        if not own:
            assert self._client is not None
            self._fast = self._slow = self._client
        elif self.cluster:
            # Made by the worker thread (_connect_cluster): a cluster client talks to the cluster
            # as it is built, which neither the application's start-up nor a fork may wait on.
            self._fast = self._slow = None
            self._read = self._open = self._close = self._record = self._manual = self._acquire = None
            return  # _connected stays clear until then
        else:
            self._fast = _sync_client(self._url, self._client, self.timeout)
            self._slow = _sync_client(self._url, self._client, max(self.timeout, 1.0))
        self._read = self._slow.register_script(_scripts.READ)
        self._open = self._slow.register_script(_scripts.OPEN)
        self._close = self._slow.register_script(_scripts.CLOSE)
        self._record = self._slow.register_script(_scripts.RECORD)
        self._manual = self._slow.register_script(_scripts.MANUAL)
        self._acquire = self._fast.register_script(_scripts.ACQUIRE)
        self._connected.set()

    def _connect_cluster(self) -> None:
        """Build the cluster clients (worker thread); raises what the cluster answers."""
        # Our own pools, without retries on the call path: a retry would multiply its budget.
        # Background work may retry once, which is how the client learns of a failover.
        fast = _cluster_client(self._url, self.timeout, retries=0)
        slow = _cluster_client(self._url, max(self.timeout, 1.0), retries=1)
        self._read = slow.register_script(_scripts.READ)
        self._open = slow.register_script(_scripts.OPEN)
        self._close = slow.register_script(_scripts.CLOSE)
        self._record = slow.register_script(_scripts.RECORD)
        self._manual = slow.register_script(_scripts.MANUAL)
        self._fast, self._slow = fast, slow
        self._acquire = fast.register_script(_scripts.ACQUIRE)  # last: the call path starts using it
        self._connected.set()

    # -- public ----------------------------------------------------------------

    def attach(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Share ``breaker``'s state with every process using this Redis and namespace.

        Returns the breaker. The fleet's current state is read in the
        background right away, so a process starting during an outage opens
        within moments.

        Raises:
            ValueError: if ``breaker`` already has shared state, or another
                breaker with its name is attached here.
        """
        if self._closed:
            raise ValueError(f"shared_state: {self.where} namespace {self.namespace!r} is closed")
        if breaker.shared_state is not None:
            raise ValueError(f"breaker: {breaker.name!r} already has shared state attached")
        link = _Link(self, breaker)
        with self._links_lock:
            existing = self._links.get(breaker.name)
            if existing is not None and existing.breaker() is not None:
                raise ValueError(f"breaker: another breaker named {breaker.name!r} is attached to namespace "
                                 f"{self.namespace!r}; names must be unique")
            self._links[breaker.name] = link
            if not self._threads:
                self._start()
        breaker.attach_shared_state(link)
        self._poll_requested = True
        self._wake.set()
        return breaker

    def detach(self, breaker: CircuitBreaker) -> None:
        """Stop sharing ``breaker``'s state; it carries on with its local state."""
        with self._links_lock:
            link = self._links.get(breaker.name)
            if link is not None and link.breaker() is breaker:
                del self._links[breaker.name]
        shared = breaker.shared_state
        if isinstance(shared, _Link) and shared.backend is self:
            breaker.attach_shared_state(None)

    @property
    def running_locally(self) -> bool:
        """True while Redis is unreachable and attached breakers run on local state."""
        return self._down

    def close(self) -> None:
        """Send what is still pending (best effort), detach every breaker, stop
        the threads and close the connections."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._up.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)
        links = self._live_links()
        if not self._down:
            try:
                self._publish_pending(links)
                self._release_leases(links)
            except self._errors:
                logger.debug("otel-cb shared state could not send its last changes", exc_info=True)
        for link in links:
            breaker = link.breaker()
            if breaker is not None:
                self.detach(breaker)
        for client in {id(self._fast): self._fast, id(self._slow): self._slow}.values():
            if client is None:
                continue
            try:
                client.close()
            except Exception:  # pragma: no cover - closing a broken connection
                logger.debug("closing a Redis client failed", exc_info=True)

    def __enter__(self) -> RedisSharedState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisSharedState {self.where} namespace={self.namespace!r}>"

    def _reset_after_fork(self) -> None:
        """In a forked child: new clients, locks, lease ids and threads; nothing of the parent's queues.

        The inherited clients are dropped, not closed: their pools' locks may
        be held forever by threads that exist only in the parent (redis-py's
        own fork check then blocks in ``reset()``)."""
        if not self._closed:
            if self._owns_clients:
                for client in (self._fast, self._slow):
                    if client is not None:
                        _abandon(client)
            self._make_clients(own=True)
        self._instance = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._links_lock = threading.Lock()
        self._wake = threading.Event()
        self._up = threading.Event()
        if not self._down:
            self._up.set()
        self._armed = False
        self._poll_requested = True
        self._threads = []
        for link in self._links.values():
            link.reset_after_fork()
        if self._links and not self._closed:
            self._start()

    # -- faults ----------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Redis failed: switch to local state at once (callers may hold a breaker's
        lock here, so the warning and the observers are left to the worker)."""
        if self._down or self._closed:
            return
        self._failure = type(exc).__name__
        self._down = True
        self._up.clear()
        self._wake.set()

    def _announce_outage(self) -> None:
        links = self._live_links()
        logger.warning(
            "otel-cb shared state on Redis at %s (namespace %r) is unavailable (%s); "
            "%d breaker(s) run on local state until it answers again",
            self.where, self.namespace, self._failure, len(links),
        )
        self._notify(links, True)

    def _recover(self) -> None:
        """Redis answers again: publish what happened locally, then adopt the fleet's state."""
        links = self._live_links()
        if self._fast is not self._slow:
            # Connections pooled before the outage may be dead: the call path must not find out.
            if self.cluster:
                if self._fast is not None:
                    self._fast.disconnect_connection_pools()
            else:
                self._fast.connection_pool.disconnect()
        self._publish_pending(links)
        self._poll(links)
        self._down = False  # only now: "running locally" lasts until the resynchronisation is done
        self._up.set()
        logger.info("otel-cb shared state on Redis at %s (namespace %r) is back; %d breaker(s) resynchronised",
                       self.where, self.namespace, len(links))
        self._notify(links, False)

    def _notify(self, links: list[_Link], local: bool) -> None:
        if not _observers.observers:
            return
        for link in links:
            breaker = link.breaker()
            if breaker is not None:
                _observers.notify("shared_state_changed", breaker, local)

    # -- the worker thread ---------------------------------------------------------

    def _start(self) -> None:
        for target, role in ((self._work, "worker"), (self._listen, "listener")):
            thread = threading.Thread(target=target, name=f"otel-cb-shared-{role}-{self.namespace}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _live_links(self) -> list[_Link]:
        with self._links_lock:
            dead = [name for name, link in self._links.items() if link.breaker() is None]
            for name in dead:
                del self._links[name]
            return list(self._links.values())

    def _work(self) -> None:
        next_poll = next_retry = 0.0
        announced = False
        while not self._closed:
            if self._down:
                self._wake.wait(max(0.0, next_retry - time.monotonic()))
            else:
                self._wake.wait(max(0.0, next_poll - time.monotonic()))
            self._wake.clear()
            if self._closed:
                break
            links = self._live_links()
            try:
                if self._down:
                    if not announced:
                        announced = True
                        self._announce_outage()
                        next_retry = time.monotonic() + self.retry_interval
                    for link in links:
                        link.outcomes.clear()  # counted locally; the fleet's window starts afresh
                    if time.monotonic() < next_retry:
                        continue
                    next_retry = time.monotonic() + self.retry_interval
                    if self._slow is None:
                        self._connect_cluster()
                    else:
                        self._slow.ping()
                    self._armed = False
                    self._recover()
                    announced = False
                    next_poll = time.monotonic() + self.sync_interval
                    continue
                if self._slow is None:
                    self._connect_cluster()
                self._publish_pending(links)
                if self._armed:
                    time.sleep(self.flush_interval)  # let a batch build up
                    self._armed = False
                    self._flush(links)
                    self._publish_pending(links)
                self._release_leases(links)
                if self._poll_requested or time.monotonic() >= next_poll:
                    self._poll_requested = False
                    self._poll(links)
                    next_poll = time.monotonic() + self.sync_interval
            except self._errors as exc:
                self._fail(exc)
            except Exception:  # pragma: no cover - a bug here must not kill the thread
                logger.exception("otel-cb shared state worker failed; it carries on")
                time.sleep(self.retry_interval)

    def _publish_pending(self, links: list[_Link]) -> None:
        for link in links:
            action = link.take_pending()
            if action is None:
                continue
            kind, value, reason = action
            try:
                if kind == "open":
                    reply = self._open(keys=link.keys, args=[
                        max(1, round(value * 1000)), _KEY_TTL_MS, self.channel, link.name, reason])
                else:
                    reply = self._close(keys=link.keys, args=[int(value), _KEY_TTL_MS, self.channel, link.name])
            except BaseException:
                link.restore_pending(action)
                raise
            link.apply(reply, published=kind == "open")

    def _flush(self, links: list[_Link]) -> None:
        batches = [(link, link.drain()) for link in links if link.outcomes]
        batches = [(link, codes) for link, codes in batches if codes]
        if not batches:
            return
        calls = [(self._record, link.keys, link.record_args(codes)) for link, codes in batches]
        for (link, _), reply in zip(batches, self._run_scripts(calls), strict=True):
            link.apply(reply)

    def _poll(self, links: list[_Link]) -> None:
        if not links:
            return
        calls: list[tuple[Any, tuple[str, ...], list[Any]]] = [(self._read, link.keys, []) for link in links]
        for link, reply in zip(links, self._run_scripts(calls), strict=True):
            link.apply(reply)

    def _run_scripts(self, calls: Sequence[tuple[Any, tuple[str, ...], list[Any]]]) -> list[Any]:
        """Run script calls in one pipelined round trip; one by one on a cluster, where
        each breaker's keys live on a node of their own and a script may be missing
        on a newly promoted primary (the script object loads it again)."""
        if self.cluster:
            return [script(keys=keys, args=args) for script, keys, args in calls]
        pipe = self._slow.pipeline(transaction=False)
        for script, keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return list(pipe.execute())

    def _release_leases(self, links: list[_Link]) -> None:
        for link in links:
            leases = link.take_releases()
            if leases:
                self._slow.zrem(link.keys[2], *leases)

    # -- the listener thread --------------------------------------------------------

    def _listen(self) -> None:
        pubsub: Any = None
        while not self._closed:
            if self._down:
                self._up.wait(self.retry_interval)
                continue
            if self._slow is None:  # the worker has not connected to the cluster yet
                time.sleep(0.005)
                continue
            try:
                if pubsub is None:
                    pubsub = self._slow.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                    # Whatever was published while we were not listening is caught by a read.
                    self._poll_requested = True
                    self._wake.set()
                message = pubsub.get_message(timeout=0.2)
                if message is not None and message.get("type") == "message":
                    self._on_message(message["data"])
            except self._errors as exc:
                self._fail(exc)
                _close_quietly(pubsub)
                pubsub = None
            except Exception:  # pragma: no cover - a bug here must not kill the thread
                logger.exception("otel-cb shared state listener failed; it carries on")
                _close_quietly(pubsub)
                pubsub = None
                time.sleep(self.retry_interval)
        _close_quietly(pubsub)

    def _on_message(self, data: bytes) -> None:
        try:
            payload = json.loads(data)
            name = payload["n"]
            reply = [payload["s"], payload["v"], payload["u"], payload["t"], payload.get("m", ""), payload.get("r", "")]
        except (ValueError, KeyError, TypeError):
            # Not one of ours (someone else publishes on the channel): not a Redis fault.
            logger.debug("otel-cb shared state ignored a message it cannot read on %s", self.channel)
            return
        link = self._links.get(name)
        if link is not None:
            link.apply(reply)


class _Link:
    """One breaker's connection to its ``RedisSharedState``: the ``SharedStateSync``
    the breaker calls, and the bookkeeping of what is still to be sent."""

    def __init__(self, backend: RedisSharedState, breaker: CircuitBreaker) -> None:
        self.backend = backend
        self.breaker = weakref.ref(breaker)
        self.name = breaker.name
        tag = f"otel_cb:{{{backend.namespace}:{breaker.name}}}"
        self.keys = (f"{tag}:state", f"{tag}:window", f"{tag}:probes")
        self.outcomes: collections.deque[int] = collections.deque(maxlen=_MAX_QUEUED)
        self._lock = threading.RLock()  # re-entered when a listener of an applied change acts on the breaker
        self._seen = 0  # the fleet state's version this process has adopted or published
        self._pending: tuple[str, float, str] | None = None  # (open or close, timeout or version, reason)
        self._held: list[tuple[int, str]] = []  # (breaker epoch, lease id)
        self._releases: list[str] = []
        self._fleet_manual = False  # the breaker's manual state came from the fleet, not this process
        self._applying = 0  # the thread adopting the fleet's state: its transitions are not published
        config = breaker.config
        if config.window_type == "count":
            self._window_args: list[Any] = ["c", int(config.window_size), 1]
        else:
            window_ms = max(1, round(config.window_size * 1000))
            self._window_args = ["t", window_ms, max(1, window_ms // 20)]
        self._rule_args = [config.minimum_calls, config.failure_rate_threshold or 0,
                           (config.slow_call_rate_threshold or 0) if config.slow_call_duration is not None else 0]
        self._open_ms = max(1, round(config.open_timeout * 1000))

    @property
    def running_locally(self) -> bool:
        return self.backend._down

    # -- called by the breaker (SharedStateSync) -----------------------------------

    def on_outcome(self, failed: bool, slow: bool) -> None:
        self.outcomes.append(failed + 2 * slow)
        backend = self.backend
        if not backend._armed:
            backend._armed = True
            backend._wake.set()

    def on_transition(self, event: StateChangeEvent) -> None:
        if self._applying == threading.get_ident():
            return  # the fleet's own decision, adopted here
        state, reason = event.state, event.reason
        if event.previous_state in _LOCAL_ONLY:
            self._fleet_manual = False
        if state is _OPEN:
            self._set_pending(("open", event.open_timeout or 0.0, reason.value))
        elif state is _CLOSED and event.previous_state in (_OPEN, _HALF_OPEN):
            # A probe success, or an operator's reset of a fleet-wide open: close the fleet,
            # unless another process reopened it since (compare and set on the version).
            with self._lock:
                seen = self._seen
            self._set_pending(("close", float(seen), reason.value))
        elif event.previous_state in _LOCAL_ONLY:
            # Manual states are per process; leaving one rejoins the fleet's state.
            with self._lock:
                self._seen = -1
            self.backend._poll_requested = True
            self.backend._wake.set()

    def acquire_probe(self) -> bool:
        backend = self.backend
        if backend._down or backend._acquire is None:
            return True  # the local limit of half_open_max_calls still applies
        breaker = self.breaker()
        if breaker is None:
            return True
        lease = f"{backend._instance}-{next(backend._lease_ids)}"
        try:
            granted = backend._acquire(keys=self.keys, args=[
                lease, max(1, round(backend.probe_lease * 1000)), breaker.config.half_open_max_calls])
        except backend._errors as exc:
            backend._fail(exc)
            return True
        if granted:
            # The breaker's lock is held. Leases of earlier half-open stays are
            # gone from Redis (reopening or closing drops them) or expire: forget them.
            epoch = breaker._epoch
            self._held = [(epoch, lease), *(item for item in self._held if item[0] == epoch)]
        return bool(granted)

    def release_probe(self) -> None:
        # Called with the breaker's lock held: only bookkeeping here, the worker sends it.
        breaker = self.breaker()
        epoch = breaker._epoch if breaker is not None else None
        keep: list[tuple[int, str]] = []
        released = False
        for held_epoch, lease in self._held:
            if held_epoch == epoch and not released:
                released = True
                self._releases.append(lease)
            elif held_epoch != epoch:
                self._releases.append(lease)  # a probe of an earlier half-open stay
            else:
                keep.append((held_epoch, lease))
        self._held = keep
        if self._releases:
            self.backend._wake.set()

    def describe(self) -> dict[str, Any]:
        """What the admin endpoint shows of this link: no URL, no credentials."""
        backend = self.backend
        return {"backend": "redis-cluster" if backend.cluster else "redis", "namespace": backend.namespace,
                "running_locally": backend._down, "fleet_manual": self._fleet_manual}

    def fleet_action(self, action: Literal["force_open", "disable", "reset"]) -> None:
        """Force open, disable or reset the breaker in every process of the namespace, this one
        included, with one round trip; the others follow within a pub/sub message.

        Raises:
            ConnectionError: Redis did not answer; nothing changed anywhere.
        """
        backend = self.backend
        manual = {"force_open": "forced_open", "disable": "disabled", "reset": "reset"}[action]
        # An operator's call, not the application's: it may wait for a cluster connection being made.
        if not backend._connected.wait(max(backend.timeout, 1.0)) or backend._down:
            raise ConnectionError(f"shared state on Redis at {backend.where} is unavailable; "
                                  "nothing changed (act per process instead)")
        try:
            reply = backend._manual(keys=self.keys, args=[manual, _KEY_TTL_MS, backend.channel, self.name])
        except backend._errors as exc:
            backend._fail(exc)
            raise ConnectionError(f"shared state on Redis at {backend.where} did not answer "
                                  f"({type(exc).__name__}); nothing changed") from None
        self.apply(reply)

    def reset_after_fork(self) -> None:
        self._lock = threading.RLock()  # re-entered when a listener of an applied change acts on the breaker
        self.outcomes.clear()
        self._pending = None
        self._held = []
        self._releases = []

    # -- called by the worker and listener threads ---------------------------------

    def _set_pending(self, action: tuple[str, float, str]) -> None:
        with self._lock:
            self._pending = action
        self.backend._wake.set()

    def take_pending(self) -> tuple[str, float, str] | None:
        with self._lock:
            action, self._pending = self._pending, None
            return action

    def restore_pending(self, action: tuple[str, float, str]) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = action

    def take_releases(self) -> list[str]:
        releases, self._releases = self._releases, []
        return releases

    def drain(self) -> list[int]:
        outcomes = self.outcomes
        popleft = outcomes.popleft
        return [popleft() for _ in range(len(outcomes))]

    def record_args(self, codes: list[int]) -> list[Any]:
        """The RECORD script's arguments for a batch of outcome codes (1 failed + 2 slow)."""
        count_window = self._window_args[0] == "c"
        if count_window:
            codes = codes[-self._window_args[1]:]  # older calls would fall out of the window anyway
        both = codes.count(3)
        return [self._open_ms, _KEY_TTL_MS, self.backend.channel, self.name, *self._window_args, *self._rule_args,
                len(codes), codes.count(1) + both, codes.count(2) + both,
                "".join(map(str, codes)) if count_window else ""]

    def apply(self, reply: list[Any], *, published: bool = False) -> None:
        """Adopt the fleet's state from a script's reply or a message:
        ``[state, version, open_until_ms, server_now_ms, manual, reason]``."""
        state, manual, reason = (_text(reply[0]), _text(reply[4]) if len(reply) > 4 else "",
                                 _text(reply[5]) if len(reply) > 5 else "")
        version, open_until, now = int(reply[1]), int(reply[2]), int(reply[3])
        breaker = self.breaker()
        if breaker is None:
            return
        # Held while the breaker moves, so that two threads (listener and worker)
        # apply versions in order: the older can never land last.
        with self._lock:
            if self._pending is not None:
                return  # our own transition goes out first; its reply brings the fleet's state
            if version == self._seen or 0 < version < self._seen:
                return  # nothing new, or a reply overtaken by a newer message
            lost = version == 0 and self._seen > 0
            self._seen = version
            local = breaker.state
            if manual or self._fleet_manual or reason == "reset":
                if self._adopt_manual(breaker, local, manual, reason):
                    return
                local = breaker.state
            if local in _LOCAL_ONLY or published:
                return
            if lost:
                # Redis forgot the breaker (flushed, or restarted without persistence):
                # what this process knows is the best there is.
                retry_after = breaker.snapshot().retry_after
                if local is _OPEN and retry_after:
                    self._set_pending(("open", retry_after, Reason.SHARED_STATE.value))
                return
            if state == "open":
                if local is not _OPEN:
                    breaker.apply_shared_state(_OPEN, max(0.0, (open_until - now) / 1000))
            elif state == "closed" and local in (_OPEN, _HALF_OPEN):
                breaker.apply_shared_state(_CLOSED)

    def _adopt_manual(self, breaker: CircuitBreaker, local: CircuitState, manual: str, reason: str) -> bool:
        """An operator's fleet-wide state: entered with the operator's own reason (``force_open``,
        ``disable``, ``reset``), as if done here, but not published again. Lock held.
        True when the manual state is all there is to adopt."""
        self._applying = threading.get_ident()
        try:
            if manual == "forced_open":
                if local is not CircuitState.FORCED_OPEN:
                    breaker.force_open()
                    self._log_adopted("forced open")
                self._fleet_manual = True
                return True
            if manual == "disabled":
                if local is not CircuitState.DISABLED:
                    breaker.disable()
                    self._log_adopted("disabled")
                self._fleet_manual = True
                return True
            # No manual state any more: a fleet-wide reset (every process, whatever its state),
            # or the end of a manual state that came from the fleet.
            self._fleet_manual = False
            if (reason == "reset" or local in _LOCAL_ONLY) and local is not _CLOSED:
                breaker.reset()
                self._log_adopted("reset")
            return False
        finally:
            self._applying = 0


    def _log_adopted(self, what: str) -> None:
        # Every process says so, not only the one the operator talked to: an audit trail per process.
        logger.warning("otel-cb: circuit breaker %r %s fleet-wide by an operator (namespace %r)", self.name, what,
                       self.backend.namespace)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# What a connection of an asyncio client says about where and who it connects as.
_PORTABLE = ("host", "port", "db", "username", "password", "path", "client_name", "ssl_keyfile", "ssl_certfile",
             "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_check_hostname", "ssl_password")


def _sync_client(url: str | None, client: Any, timeout: float) -> redis.Redis:
    """A sync client with ``timeout`` on every socket operation and no retries, for
    ``url`` or for the server an asyncio client (``redis.asyncio.Redis``) talks to."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    no_retry = Retry(NoBackoff(), 0)
    if client is None:
        assert url is not None
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=no_retry)
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        raise ValueError(f"client: {type(client).__name__} is not allowed; use a redis.Redis or a "
                         "redis.asyncio.Redis on a single server")
    kwargs = {key: value for key, value in pool.connection_kwargs.items() if key in _PORTABLE}
    connection_class = getattr(redis.connection, pool.connection_class.__name__, redis.connection.Connection)
    return redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=connection_class, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=no_retry, **kwargs))


def _cluster_client(url: str | None, timeout: float, *, retries: int) -> Any:
    """A Redis Cluster client for a ``redis+cluster://`` (or plain) URL naming one of its nodes."""
    from redis.backoff import ConstantBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    assert url is not None
    parts = urlsplit(url)
    plain = parts._replace(scheme=parts.scheme.removesuffix("+cluster")).geturl()
    return RedisCluster.from_url(plain, socket_timeout=timeout, socket_connect_timeout=timeout,
                                 retry=Retry(ConstantBackoff(0.05), retries))


# Clients inherited from the parent in a forked child: never closed, never collected.
_abandoned: list[Any] = []


def _abandon(client: Any) -> None:
    """Drop an inherited client without touching its pools: closing one (also from ``__del__``)
    takes pool locks that a thread of the parent may have held at fork time, forever."""
    clients = [node.redis_connection for node in client.get_nodes()] if hasattr(client, "get_nodes") else [client]
    for each in clients:
        if each is not None:
            each.auto_close_connection_pool = False  # its __del__ then leaves the pool alone
    _abandoned.append(client)


def _describe_url(url: str | None) -> str:
    """Where a cluster URL points, without credentials, paths or database secrets."""
    parts = urlsplit(url or "")
    return f"cluster {parts.hostname or 'localhost'}:{parts.port or 6379}"


def _describe(client: Any) -> str:
    """Where a client connects, without credentials, paths or database secrets."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return "a unix socket"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:  # pragma: no cover - closing a broken connection
            logger.debug("closing a Redis subscription failed", exc_info=True)
