"""Applying and removing wrapt patches when their module is imported.

``apply(patch)`` wraps ``patch.target`` in ``patch.module`` with a wrapt
``FunctionWrapper`` at once if the module is imported, else from a post-import
hook. Our wrapper goes beneath any wrapt wrappers already there (OpenTelemetry's
instrumentors use wrapt), so it runs inside their spans whichever was applied
first. Each patch is applied at most once, and ``remove_all()`` removes exactly
the wrappers applied here: through ``wrapt.unwrap_object`` with the handle we
kept, which splices our layer out even when another wrapper (OpenTelemetry's,
say) was put on top of it later, and leaves that other wrapper in place.

OpenTelemetry's ``unwrap()`` restores a class attribute with
``setattr(cls, name, getattr(cls, name).__wrapped__)``; ``getattr`` on the
class binds, so when it uninstruments first the attribute becomes a
``BoundFunctionWrapper`` copy of our layer (its ``_self_parent`` is our
handle), which rebinds through our handle on every lookup. Removal therefore
looks for the handle or such a copy of it, and restores the handle's own
``__wrapped__``: after both sides uninstrument, in either order, the attribute
is the original object again. The descent when applying never goes into a
bound copy (setting its ``__wrapped__`` would be bypassed by that rebinding):
it wraps above it.

If our layer cannot be spliced out (what sits above it is not a wrapt
wrapper), it is switched off instead: every patched wrapper goes through a
switch, so a removed patch passes calls straight through.

Failures are contained: a patch whose target does not exist, or whose
application raises, is logged once with its integration and skipped; a
post-import hook never makes the user's ``import`` fail.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ._call import Patch

__all__ = ["apply", "applied", "remove_all"]

logger = logging.getLogger("otel_cb")


class _Switch:
    """Our layer around a plugin's wrapper; ``on`` is cleared when the patch is removed.

    wrapt calls ``layer``, a plain function that carries its switch as
    ``layer.switch``: wrapt calling an instance's ``__call__`` instead cost
    every patched call about 1,000 instructions more.
    """

    __slots__ = ("on", "wrapper", "layer")

    def __init__(self, patch: Patch) -> None:
        self.on = True
        self.wrapper = patch.wrapper  # as the plugin gave it: a function or its name
        # A named wrapper is imported on the first call here, not through a trampoline of its own:
        # that would be one more Python frame on every patched call.
        loaded: Callable[..., Any] | None = patch.wrapper if callable(patch.wrapper) else None

        def layer(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
            nonlocal loaded
            if self.on:
                if loaded is None:
                    loaded = self._load(patch)
                    if loaded is None:
                        return wrapped(*args, **kwargs)
                return loaded(wrapped, instance, args, kwargs)
            return wrapped(*args, **kwargs)

        layer.switch = self  # type: ignore[attr-defined]
        self.layer = layer

    def _load(self, patch: Patch) -> Callable[..., Any] | None:
        try:
            return patch.load_wrapper()
        except Exception as exc:
            if self.on:  # said once: the switch stays off after
                self.on = False
                logger.warning("otel-cb: integration %r cannot load its wrapper %r for %s.%s (%s: %s); calls "
                               "through it are not protected", patch.integration, patch.wrapper, patch.module,
                               patch.target, type(exc).__name__, exc)
            return None


def switch_of(node: Any) -> _Switch | None:
    """The switch of ``node`` if it is a wrapt wrapper whose wrapper is one of our layers."""
    switch = getattr(getattr(node, "_self_wrapper", None), "switch", None)
    return switch if isinstance(switch, _Switch) else None


_lock = threading.RLock()
_wanted: dict[str, list[Patch]] = {}  # module name -> patches to apply when it is imported
_applied: dict[Patch, tuple[ModuleType, Any, _Switch]] = {}  # patch -> (module, wrapt handle, switch)
_hooked: set[str] = set()  # modules with a post-import hook registered and not yet fired
_failed: set[Patch] = set()


def apply(patch: Patch) -> None:
    """Apply ``patch`` now if its module is imported, else when it is (idempotent)."""
    import wrapt

    with _lock:
        patches = _wanted.setdefault(patch.module, [])
        if patch not in patches:
            patches.append(patch)
        module = sys.modules.get(patch.module)
        if module is not None:
            _apply_one(patch, module)
            return
        if patch.module in _hooked:
            return
        _hooked.add(patch.module)
    # Outside our lock: wrapt calls the hook at once if the module got imported meanwhile.
    wrapt.register_post_import_hook(_on_import, patch.module)


def _on_import(module: ModuleType) -> None:
    # Runs inside the user's import statement: it must never raise.
    try:
        with _lock:
            _hooked.discard(module.__name__)
            for patch in list(_wanted.get(module.__name__, ())):
                _apply_one(patch, module)
    except Exception:
        logger.warning("otel-cb: patching %s failed; the module works unpatched", module.__name__, exc_info=True)


def _apply_one(patch: Patch, module: ModuleType) -> None:
    if patch in _applied or patch in _failed:
        return
    try:
        handle = _wrap_innermost(module, patch.target, _Switch(patch))
    except Exception as exc:
        _failed.add(patch)
        logger.warning("otel-cb: integration %r cannot patch %s.%s (%s: %s); calls through it are not protected",
                       patch.integration, patch.module, patch.target, type(exc).__name__, exc)
        return
    _applied[patch] = (module, handle, handle._self_wrapper.switch)


def _wrap_innermost(module: ModuleType, target: str, switch: _Switch) -> Any:
    """Wrap ``target`` beneath any wrapt wrappers already on it, directly around the original.

    OpenTelemetry's instrumentors wrap with wrapt too; going under them, in
    whichever order the two were applied, keeps the breaker inside their
    client span. Anything that is not a wrapt wrapper ends the descent: we
    cannot rewire it, so we wrap above it.

    A function reachable under two names (``asyncpg.connect`` is
    ``asyncpg.connection.connect``, bound when the package imported the
    already patched module) gets one layer: when the descent meets our layer
    of the same plugin wrapper, that layer is the handle of this patch too.
    Two layers would judge one call twice, and the outer one, refusing,
    would drop the inner one's started call unawaited.
    """
    import wrapt

    node: Any = wrapt.resolve_path(module, target)[2]
    layer: Any = None
    for _ in range(64):  # a bound on pathological chains
        if not issubclass(type(node), wrapt.BaseObjectProxy) or _is_bound_copy(node):
            break
        ours = switch_of(node)
        if ours is not None and ours.wrapper == switch.wrapper:
            return node
        layer, node = node, node.__wrapped__
    if layer is None:
        return wrapt.wrap_function_wrapper(module, target, switch.layer)
    handle = wrapt.FunctionWrapper(node, switch.layer)
    layer.__wrapped__ = handle
    return handle


def _is_bound_copy(node: Any, of: Any = None) -> bool:
    """Whether ``node`` is a bound copy of a wrapt wrapper (of ``of``, if given) left on an attribute."""
    import wrapt

    if not isinstance(node, wrapt.BoundFunctionWrapper):
        return False
    parent = node._self_parent
    return parent is not None and (of is None or parent is of)


def _remove(module: ModuleType, target: str, handle: Any) -> None:
    """Take our layer ``handle``, or the bound copy OpenTelemetry's ``unwrap()`` left of it, off ``target``."""
    import wrapt

    current = wrapt.resolve_path(module, target)[2]
    found = wrapt.find_wrapper(current, predicate=lambda entry: entry is handle or _is_bound_copy(entry, handle))
    if found is None:
        return  # replaced wholesale by someone else: nothing of ours is reachable
    if found is not handle:
        # A bound copy wraps the original as bound for the class; restore the unbound original itself.
        found.__wrapped__ = handle.__wrapped__
    wrapt.unwrap_object(module, target, found, missing_ok=True)


def applied() -> list[Patch]:
    """Return the patches currently applied, in order."""
    with _lock:
        return list(_applied)


def remove_all() -> None:
    """Remove every patch applied here and forget pending ones; other wrappers stay."""
    with _lock:
        items = list(_applied.items())
        _applied.clear()
        _wanted.clear()
        _failed.clear()
        # Pending post-import hooks stay registered with wrapt (it has no way
        # to unregister); with nothing wanted they do nothing when they fire.
    for patch, (module, handle, switch) in reversed(items):
        switch.on = False
        try:
            _remove(module, patch.target, handle)
        except Exception as exc:
            # Something that is not a wrapt wrapper sits on top of ours: the
            # switch above already makes our layer a pass-through.
            logger.debug("otel-cb: left %s.%s wrapped but switched off (%s)", patch.module, patch.target, exc)
