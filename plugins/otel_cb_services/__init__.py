"""otel-cb service plugins and clients for the incident manager's four dependencies.

Each module ``sentinel``, ``shield``, ``edge_agent`` and ``db`` is an otel-cb
plugin registered in the ``otel_cb`` entry-point group under that name; it
names the dependency's breaker, gives it settings that fit how the service
fails, routes the service's calls to it and decides what happens when it is
open. ``clients`` holds small typed clients for the three remote services,
plain httpx and grpc code with no breaker code inside: the protection comes
from ``otel-cb-instrument``. ``demo`` runs the whole incident manager against
simulated services.
"""

__all__: list[str] = []
