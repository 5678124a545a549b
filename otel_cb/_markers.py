"""The pluggy markers of otel-cb and its project name, defined once.

``PROJECT`` is both pluggy's project name and the entry-point group plugins
register under. :mod:`otel_cb.hookspecs` marks its specs with ``hookspec``;
plugins mark implementations with ``hookimpl`` (re-exported by
:mod:`otel_cb.plugin` and ``otel_cb.hookimpl``). Nothing of otel-cb is
imported here, so every other module can import this one without a cycle.
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "otel_cb"
"""The pluggy project name, which is also the entry-point group plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks a hook specification (used by :mod:`otel_cb.hookspecs`)."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a hook implementation in a plugin; also available as ``otel_cb.hookimpl``."""
