"""What runs inside the application's process when started by ``otel-cb-instrument``.

``otel-cb-instrument`` puts ``path/`` (holding only a ``sitecustomize``) first
on ``PYTHONPATH``; Python imports it at start-up and it calls ``boot()``, in
every Python process the application starts too. ``boot()``:

1. calls ``otel_cb.instrument()`` (config, plugins, import hooks), so our
   patches are in place before any OpenTelemetry instrumentor wraps the same
   functions: theirs then sit outside ours, and a rejected or failed call is
   recorded on the client span itself;
2. runs the ``sitecustomize`` that ours hides (the user's own, or
   ``opentelemetry-instrument``'s), so nothing of the user's is lost;
3. sets up the OpenTelemetry SDK through ``otel_cb.telemetry.configure()``,
   which leaves providers alone if the app or ``opentelemetry-instrument``
   installed them, and enables otel-cb's telemetry;
4. activates OpenTelemetry's own client instrumentors for httpx, requests,
   grpc and asyncpg when installed and not already active (so client spans exist).

When ``opentelemetry-instrument`` runs inside ``otel-cb-instrument``, its
``sitecustomize`` comes first on the path and ours never runs; instead its
``opentelemetry_pre_instrument`` entry point calls ``pre_instrument()``,
which does steps 1 and 3 after its SDK set-up and before its instrumentors.
Either way nothing is set up twice. Nothing here may raise into the
interpreter's start-up: failures are logged and the application runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["ACTIVE_ENV", "BOOTSTRAP_DIR", "boot", "chain_sitecustomize", "pre_instrument"]

logger = logging.getLogger("otel_cb")

BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "path")
ACTIVE_ENV = "OTEL_CB_INSTRUMENT"
"""Set to ``1`` by ``otel-cb-instrument`` so the ``pre_instrument`` entry point acts only under it."""

# OpenTelemetry instrumentor entry points (group opentelemetry_instrumentor)
# for the clients otel-cb protects; servers are the application's business.
CLIENT_INSTRUMENTORS = ("httpx", "requests", "grpc_client", "grpc_aio_client", "asyncpg")
_LIBRARY_OF = {"httpx": "httpx", "requests": "requests", "grpc_client": "grpc", "grpc_aio_client": "grpc",
               "asyncpg": "asyncpg"}

_lock = threading.Lock()
_instrumented = False
_telemetry = False


def boot() -> None:
    """Everything ``otel-cb-instrument`` promises, in order; called by our ``sitecustomize``."""
    _instrument()
    chain_sitecustomize()
    _setup_telemetry()
    try:
        _activate_instrumentors()
    except Exception:
        logger.error("otel-cb: OpenTelemetry instrumentors not activated", exc_info=True)


def pre_instrument() -> None:
    """The ``opentelemetry_pre_instrument`` entry point: boot inside ``opentelemetry-instrument``.

    Does nothing unless the process was started by ``otel-cb-instrument``
    (``OTEL_CB_INSTRUMENT=1``), so installing otel-cb never changes what
    ``opentelemetry-instrument`` alone does.
    """
    if os.environ.get(ACTIVE_ENV) != "1":
        return
    _instrument()
    _setup_telemetry()


def _instrument() -> None:
    global _instrumented
    with _lock:
        if _instrumented:
            return
        _instrumented = True
    try:
        from .._instrument import instrument
        from .._settings import ConfigError

        try:
            instrument()
        except ConfigError as exc:
            # otel-cb-instrument validated it before starting the app; this is a
            # child process that found another config. It runs unprotected.
            logger.error("otel-cb: %s; circuit breakers are off in this process", exc)
    except Exception:
        logger.error("otel-cb: instrumentation failed; the application runs without circuit breakers",
                     exc_info=True)
    if os.environ.get("OTEL_CB_ADMIN_ADDRESS"):  # else not even imported: the default costs nothing
        from ..admin import start_from_env

        start_from_env()  # never raises


def _setup_telemetry() -> None:
    global _telemetry
    with _lock:
        if _telemetry:
            return
        _telemetry = True
    try:
        from .. import telemetry

        setup = telemetry.configure()  # leaves providers installed by others alone
        _notice_destination(setup)
    except ValueError as exc:
        logger.error("otel-cb: telemetry not set up: %s", exc)
    except Exception:
        logger.error("otel-cb: telemetry not set up", exc_info=True)


_NOTICE_ENV = "OTEL_CB_NOTICE_SHOWN"


def _notice_destination(setup: Any) -> None:
    """Say once per process tree where telemetry goes, so a missing collector is no mystery."""
    if os.environ.get(_NOTICE_ENV) == "1":
        return
    from .._redact import mask

    os.environ[_NOTICE_ENV] = "1"  # inherited: child processes stay quiet
    from ..telemetry._configure import describe_destinations

    sentence = describe_destinations(setup)
    if sentence:
        # Straight to stderr: the application's logging is not configured yet.
        sys.stderr.write(mask(sentence) + "\n")


def _activate_instrumentors() -> None:
    from importlib.metadata import entry_points

    skipped = {n.strip() for n in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if "*" in skipped:
        return
    for ep in entry_points(group="opentelemetry_instrumentor"):
        if ep.name not in CLIENT_INSTRUMENTORS or ep.name in skipped:
            continue
        if importlib.util.find_spec(_LIBRARY_OF[ep.name]) is None:
            continue
        try:
            instrumentor = ep.load()()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument()
        except Exception as exc:
            logger.warning("otel-cb: OpenTelemetry instrumentor %r not activated: %s: %s",
                           ep.name, type(exc).__name__, exc)


def chain_sitecustomize() -> None:
    """Run the ``sitecustomize`` that ours hides: the next one on ``sys.path`` after our directory."""
    from importlib.machinery import PathFinder

    ours = os.path.normcase(os.path.abspath(BOOTSTRAP_DIR))
    rest = [p for p in sys.path if os.path.normcase(os.path.abspath(p or os.curdir)) != ours]
    try:
        spec = PathFinder.find_spec("sitecustomize", rest)
    except Exception:
        spec = None
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get("sitecustomize")
    # The user's module becomes *the* sitecustomize, as if ours were not there.
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        if previous is not None:
            sys.modules["sitecustomize"] = previous
        logger.error("otel-cb: the application's sitecustomize (%s) raised", spec.origin, exc_info=True)
