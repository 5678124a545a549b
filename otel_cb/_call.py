"""The plain data of the plugin API: a call, a patch, a refusal, a section validator.

Imports nothing of otel-cb and no third-party library, so the hook specs,
the plugin manager and the integrations can all import it; users get these
names from :mod:`otel_cb.plugin`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

__all__ = ["Call", "CallKind", "Patch", "Refusal", "SectionValidator", "Wrapper"]

T = TypeVar("T")

CallKind = Literal["http", "grpc", "db"]

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

SectionValidator = Callable[[str, Mapping[str, Any]], None]
"""``validate(breaker_name, {key: value})``: raises ``ValueError`` whose message starts with the field
(``"fallback.ttl: '0s' is not allowed; use a positive duration"``)."""


_set = object.__setattr__


@dataclass(frozen=True, slots=True, init=False)
class Call:
    """One outgoing call, as routing, classification and fallback hooks see it.

    Routing is memoised per ``(kind, target, service, method)``: an
    ``otel_cb_select_breaker`` hook must decide from those four fields only.

    Attributes:
        kind: ``"http"``, ``"grpc"`` or ``"db"``.
        target: Where the call goes, never with credentials, path or query:
            HTTP ``"scheme://host:port"``, gRPC the channel target
            ``"host:port"``, database ``"host:port/dbname"``.
        method: HTTP ``"GET"``; gRPC ``"/pkg.Service/Method"``; database
            ``"fetch"``, ``"execute"``, ``"connect"``, ``"acquire"``...
        service: gRPC ``"pkg.Service"``; empty otherwise.
        url: HTTP only: the URL without userinfo, for routing decisions and
            fallbacks. It may hold a path and a query, so it never goes into
            breaker names, span attributes, metric labels or logs. An
            integration may pass a function of ``request`` instead
            (``url=lambda request: ...``): it runs on the first read of
            ``call.url``, so a call whose URL nobody reads never builds it.
        request: The client's own request object when there is one
            (``httpx.Request``, a gRPC request message), else None.
    """

    kind: CallKind
    target: str
    method: str = ""
    service: str = ""
    url: str = ""
    request: object = None

    def __init__(self, kind: CallKind, target: str, method: str = "", service: str = "",
                 url: str | Callable[[Any], str] = "", request: object = None) -> None:
        # The dataclass's own __init__, with object.__setattr__ looked up once instead of per field:
        # every protected call builds a Call, and this is a sixth of its cost.
        _set(self, "kind", kind)
        _set(self, "target", target)
        _set(self, "method", method)
        _set(self, "service", service)
        _set_url(self, url)  # past the deferring descriptor below, straight into the slot
        _set(self, "request", request)


class _DeferredURL:
    """``Call.url``: the slot's value, or what the function of ``request`` the slot holds returns (then kept).

    Every protected HTTP request builds a Call, and few ever read its URL (a
    stale-cache key, a hook that asks): building the text only then saves
    each request the client's URL serialisation.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: Any) -> None:
        self._slot = slot

    def __get__(self, call: Call | None, owner: type | None = None) -> Any:
        if call is None:
            return self
        value = self._slot.__get__(call, owner)
        if value.__class__ is not str and callable(value):
            value = value(call.request)
            self._slot.__set__(call, value)
        return value

    def __set__(self, call: Call, value: object) -> None:
        self._slot.__set__(call, value)  # object.__setattr__, as the frozen dataclass's own __init__ uses

    def __delete__(self, call: Call) -> None:
        self._slot.__delete__(call)


_set_url = vars(Call)["url"].__set__
Call.url = _DeferredURL(vars(Call)["url"])  # type: ignore[assignment,misc]


@dataclass(frozen=True, slots=True)
class Patch:
    """One wrapt patch that the engine applies when ``module`` is imported (or at once).

    Attributes:
        module: The module to patch, e.g. ``"httpx"``.
        target: Dotted path inside the module, e.g. ``"HTTPTransport.handle_request"``.
        wrapper: A wrapt wrapper, ``wrapper(wrapped, instance, args, kwargs)``,
            or where to find one, ``"package.module:function"``: imported at
            the first patched call, so a plugin whose wrapper's module imports
            the client library costs a service without it nothing (a wrapper
            that cannot be imported is logged once, and calls go through
            unprotected). It must call ``wrapped(*args, **kwargs)`` for every
            call it does not protect, so an unprotected call behaves exactly
            as without it.
        integration: The integration or plugin name that ``--disable`` and
            ``OTEL_CB_DISABLED`` use, e.g. ``"httpx"``.

    Raises:
        ValueError: ``wrapper`` is neither callable nor a ``"module:function"`` name.
    """

    module: str
    target: str
    wrapper: Wrapper | str
    integration: str

    def __post_init__(self) -> None:
        wrapper = self.wrapper
        if not callable(wrapper) and not (isinstance(wrapper, str) and _is_reference(wrapper)):
            raise ValueError(f"wrapper: {str(wrapper)[:60]!r} is not allowed; use a wrapt wrapper or its "
                             "'package.module:function' name")

    def load_wrapper(self) -> Wrapper:
        """The wrapper; a named one is imported now.

        Raises:
            ImportError, AttributeError: the named module or function does not exist.
        """
        wrapper = self.wrapper
        if callable(wrapper):
            return wrapper
        module, _, name = wrapper.partition(":")
        loaded: Wrapper = getattr(importlib.import_module(module), name)
        return loaded


def _is_reference(name: str) -> bool:
    module, colon, attribute = name.partition(":")
    return bool(colon) and all(part.isidentifier() for part in (*module.split("."), attribute))


@dataclass(frozen=True, slots=True)
class Refusal(Generic[T]):
    """What an ``otel_cb_fallback`` hook returns to fail closed: ``value`` is served, counted as ``refused``.

    The caller gets ``value`` (it must be what the client would return, as for
    any fallback), but the breaker's ``snapshot().fallbacks`` and the
    ``circuit_breaker.fallbacks`` metric count it as ``"refused"``, not as a
    successful substitute. Shield's ``NotScanned`` answer is one.

    Attributes:
        value: What the caller receives instead of the error.
    """

    value: T
