"""What the requests integration adds per request: patched against unpatched, both traced by OpenTelemetry.

Both sides run OpenTelemetry's requests instrumentation with an SDK tracer
provider (spans recorded, not exported) and otel-cb's telemetry enabled,
against the same loopback HTTP/1.1 server (``tests/http_server.py`` in a
process of its own, keep-alive ``requests.Session``). The patched side adds
otel-cb's three patches (``HTTPAdapter.send`` inside OpenTelemetry's
``Session.send``, and the body's end), with a breaker per destination routed
through the plugin helpers. Measured as ``bench_httpx`` measures, with its
set-up: rounds in ABBA order, the median of the per-round patched/unpatched
ratios (paired, so drift in the machine's load hits both alike) beside the
best rounds, and what otel-cb's layer alone costs per request (the patched
adapter around an inner send that answers at once, body read through the
patched ``iter_content``, inside a recording span; CPU time of the thread,
median of paired batches), with OpenTelemetry's share of it: the *attributes
only* side of ``bench_httpx``, a wrapper on ``HTTPAdapter.send`` that only sets
the two breaker attributes, in the same rounds and batches. Targets: at most
2% more wall time, at most 10 us for the layer. ``OTEL_CB_BENCH_BASELINE``
adds an earlier copy of the package as one more side, as in ``bench_httpx``.

The section runs in a subprocess: it installs global OpenTelemetry providers
and patches requests for the whole process.
"""

from __future__ import annotations

import importlib
import io
import sys
from collections.abc import Callable
from typing import Any

from .bench_httpx import (
    FLOOR,
    STAND_INS,
    UNPATCHED,
    apply_patches,
    layer_costs,
    layer_of,
    run_child,
    server_process,
    set_up,
    table,
    timed_rounds,
)

__all__ = ["TITLE", "run"]

TITLE = "requests: per-request cost of the patched client (both with OpenTelemetry's requests instrumentation)"


def run(quick: bool) -> str:
    return run_child("benchmarks.bench_requests", quick)


class _Sides:
    """Switches otel-cb's patches (of one package) in and out; OpenTelemetry's instrumentor stays on both sides."""

    def __init__(self, packages: list[str]) -> None:
        import requests
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        self.patches = {package: importlib.import_module(f"{package}.integrations.requests").otel_cb_patches()
                        for package in packages}
        self.owners = [(requests.adapters.HTTPAdapter, "send"), (requests.Response, "iter_content"),
                       (requests.Response, "close")]
        self.originals = [vars(owner)[name] for owner, name in self.owners]
        self.remove: Callable[[], None] | None = None
        RequestsInstrumentor().instrument()

    def enter(self, side: str) -> None:
        """``UNPATCHED``, ``FLOOR`` (its wrapper on ``HTTPAdapter.send``) or a package name: its three patches."""
        import wrapt

        if self.remove is not None:
            self.remove()
            self.remove = None
        for (owner, name), original in zip(self.owners, self.originals, strict=True):
            setattr(owner, name, original)
        if side in STAND_INS:
            wrapt.wrap_function_wrapper("requests.adapters", "HTTPAdapter.send", STAND_INS[side])
        elif side in self.patches:
            self.remove = apply_patches(side, "requests")


def _child(quick: bool) -> str:
    packages = set_up()
    import requests

    rounds, count = (4, 100) if quick else (200, 50)
    sides = _Sides(packages)
    switch: dict[str, Callable[[], None]] = {
        side: lambda side=side: sides.enter(side) for side in (UNPATCHED, *packages, FLOOR)}  # type: ignore[misc]
    with server_process() as base_url, requests.Session() as session:
        url = f"{base_url}/item"

        def batch(n: int) -> None:
            for _ in range(n):
                session.get(url).raise_for_status()

        results = timed_rounds(switch, {"sync": batch}, rounds, count)
        layers = _layer_costs(requests, sides, url, packages, 2_000 if quick else 30_000)
        sides.enter(UNPATCHED)

    lines = table("requests", results, layers)
    lines.append("")
    lines.append(f"{rounds} ABBA rounds of {count} keep-alive GETs per side through one requests.Session against a "
                 "loopback server in another process. Both sides trace every request with "
                 "opentelemetry-instrumentation-requests. *Extra wall time*: the median over rounds of "
                 "patched/unpatched; *extra client CPU*: CPU time of the client process per request, patched "
                 "minus unpatched, median over rounds. *otel-cb layer alone*: the patched HTTPAdapter.send around "
                 "an inner send that answers at once, with its body read through the patched iter_content, inside "
                 "a recording span (routing, admission, span attributes, classification and the verdict at the "
                 "body's end), CPU time of the thread, median of paired batches; in parentheses the part that is "
                 "OpenTelemetry's own handling of the two span attributes. *attributes only*: a wrapper on "
                 "HTTPAdapter.send that only sets those two attributes on the client span, as otel-cb does: the "
                 "floor any breaker that marks the span pays; the lines under the table compare otel-cb with it, "
                 "round by round. On a loaded machine the end-to-end figures carry noise of the order of the "
                 "differences.")
    return "\n".join(lines)


def _layer_costs(requests: Any, sides: _Sides, url: str, packages: list[str], calls: int) -> dict[str, float]:
    """Per request: each package's patched adapter around a send that answers at once, body read."""
    from urllib3 import HTTPResponse

    adapter = requests.adapters.HTTPAdapter()
    request = requests.Request("GET", url).prepare()

    def answer(*args: Any, **kwargs: Any) -> Any:
        raw = HTTPResponse(body=io.BytesIO(b"{}"), headers={"Content-Length": "2"}, status=200,
                           preload_content=False)
        return adapter.build_response(request, raw)

    def bare() -> None:
        answer(request).content  # noqa: B018

    def wrapped(package: str) -> Callable[[], None]:
        send = layer_of(package, sides.patches[package][0])

        def call() -> None:
            send(answer, adapter, (request,), {}).content  # noqa: B018

        return call

    return layer_costs(bare, {package: wrapped(package) for package in packages}, sides.enter, calls)


def main(argv: list[str]) -> int:
    print(_child(quick=argv[:1] == ["quick"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
