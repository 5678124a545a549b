"""The admin endpoint: look at and steer a running process's circuit breakers.

Off by default. ``otel-cb-instrument --admin-address 127.0.0.1:9466 ...`` (or
``OTEL_CB_ADMIN_ADDRESS``) serves it from a daemon thread; ``start(address,
token=...)`` does the same for an application started without
``otel-cb-instrument``. The address is ``PORT``, ``HOST:PORT`` (host
127.0.0.1 when left out), ``[IPV6]:PORT`` or a unix socket path
(``unix:/run/app.sock``); ``{pid}`` in it is replaced by the process id, so
each forked worker (gunicorn, multiprocessing) serves on an address of its
own. Without ``{pid}``, a forked child does not serve (the address is its
parent's).

API (JSON in and out, names URL-encoded)::

    GET  /v1/circuit-breakers                      every breaker, plus recent transitions
    GET  /v1/circuit-breakers/{name}               one breaker
    POST /v1/circuit-breakers/{name}/force-open    body {"fleet": true} acts on every process
    POST /v1/circuit-breakers/{name}/disable       sharing the breaker's Redis namespace
    POST /v1/circuit-breakers/{name}/reset
    POST /v1/circuit-breakers/{name}/check-health  409 while no health check is attached

Security: with ``OTEL_CB_ADMIN_TOKEN`` set every request needs
``Authorization: Bearer <token>`` (compared in constant time); without it the
endpoint starts only on loopback or a unix socket (mode 0600), and answers
reads only. Requests are bounded (body 4 KiB, 20 per second per peer, 8 at a
time, 10 s per connection); every action is logged on ``otel_cb.admin`` with
the peer, the action and its result.

The ``otel-cb status | open | disable | reset | check | top`` commands are its
client (``otel_cb.admin._commands``).
"""

from __future__ import annotations

from ._server import ADDRESS_ENV, TOKEN_ENV, AdminServer, breakers, start, start_from_env, stop

__all__ = ["ADDRESS_ENV", "TOKEN_ENV", "AdminServer", "breakers", "start", "start_from_env", "stop"]
