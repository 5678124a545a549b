"""`CircuitBreakerConfig`: the validated, immutable settings of one breaker, and its presets.

Validation happens once, at construction, so the call path never re-checks a
value. Parsing of human durations (``"30s"``) lives here too because
``from_dict`` is the one door through which configuration files come in.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._problems import Problems, unknown_key
from ._redact import shown

__all__ = ["CircuitBreakerConfig", "MAX_COUNT", "MAX_COUNT_WINDOW", "MAX_SECONDS", "MAX_TIME_WINDOW", "PRESETS",
           "config_from_dict", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

MAX_SECONDS = 7 * 24 * 3600.0
"""Upper bound of every duration (7 days): beyond it timers and lock timeouts overflow."""
MAX_COUNT = 1_000_000
"""Upper bound of every call count (thresholds, probes, ``minimum_calls``)."""
MAX_COUNT_WINDOW = 100_000
"""Upper bound of a count window's ``window_size`` (one byte per call, allocated up front)."""
MAX_TIME_WINDOW = 24 * 3600.0
"""Upper bound of a time window's ``window_size`` in seconds (1 day)."""
_MAX_BACKOFF = 100.0


def parse_duration(field_name: str, value: object, maximum: float = MAX_SECONDS) -> float:
    """Return seconds for a number or a string such as ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"``.

    The result is a finite float no larger than ``maximum`` (default 7 days);
    sign and lower bounds are the caller's to check.

    Raises:
        ValueError: naming the field, the value and the accepted forms.
    """
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int):
        seconds = float(value) if abs(value) <= maximum else math.inf
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str) and len(value) <= 100:
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is None or math.isnan(seconds):
        raise ValueError(_duration_error(field_name, value))
    if abs(seconds) > maximum:
        raise ValueError(f"{field_name}: {shown(value)} is not allowed; use a duration of at most {_seconds(maximum)}")
    return seconds


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0)):
        if value >= size and value % size == 0:
            return f"{value:g} seconds ({value / size:g}{unit})"
    return f"{value:g} seconds"


def _duration_error(field_name: str, value: object) -> str:
    return f"{field_name}: {shown(value)} is not a duration; use seconds or a string like '30s', '500ms', '2m'"


ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """Settings of one circuit breaker; frozen and validated on construction.

    Every field is keyword-only. Durations are seconds. A rule is switched off
    by setting its threshold to None.

    Attributes:
        failure_threshold: Consecutive failures that open the breaker (None: rule off).
        failure_rate_threshold: Failure ratio in the window, in (0, 1], that opens it (None: rule off).
        slow_call_duration: A call at least this long is slow (None: slow-call rule off).
        slow_call_rate_threshold: Slow-call ratio in the window, in (0, 1], that opens it.
        minimum_calls: Calls the window must hold before the rate rules apply.
        window_type: ``"time"`` (the last ``window_size`` seconds) or ``"count"``
            (the last ``window_size`` calls).
        window_size: Seconds or calls, after ``window_type``.
        open_timeout: How long the breaker stays open before admitting probes.
        backoff_multiplier: Each consecutive reopening multiplies the open
            timeout by this (1.0: constant).
        max_open_timeout: Upper bound of the open timeout after backoff.
        jitter: Adds up to this fraction of the open timeout, at random, so a
            fleet does not probe in lockstep.
        half_open_max_calls: Probes admitted at once in half-open.
        success_threshold: Consecutive probe successes that close the breaker.
        call_timeout: For async calls only: a call running longer is cancelled
            and counts as a failure (None: no timeout).
        adaptive: The ``failure_threshold`` rule learns the failure rate the
            dependency normally shows and trips on evidence of a rate far above
            it (``otel_cb._detection``); False: the classic rule,
            ``failure_threshold`` failures with no success in between.
        health_check_interval: Seconds between background health checks
            (jittered) while the breaker is open and has a health check; None:
            no background checks (the caller drives ``check_health()``).
        health_check_timeout: A health check running longer counts as failed.
        healthy_threshold: Consecutive passed health checks that move an open
            breaker to half-open.
        record_exceptions: Exception types that count as failures.
        ignore_exceptions: Exception types that count as neither failure nor
            success; they propagate. Checked before ``record_exceptions``.
        is_failure: Predicate on an exception; when set, it decides instead of
            ``record_exceptions`` (False means ignored).
        is_failure_result: Predicate on a return value; True records the call
            as a failure although it returned (for example an HTTP 503 response).
    """

    failure_threshold: int | None = 5
    failure_rate_threshold: float | None = 0.5
    slow_call_duration: float | None = 5.0
    slow_call_rate_threshold: float = 0.5
    minimum_calls: int = 10
    window_type: Literal["time", "count"] = "time"
    window_size: float = 60
    open_timeout: float = 30.0
    backoff_multiplier: float = 1.0
    max_open_timeout: float = 300.0
    jitter: float = 0.0
    half_open_max_calls: int = 3
    success_threshold: int = 3
    call_timeout: float | None = None
    adaptive: bool = True
    health_check_interval: float | None = 2.0
    health_check_timeout: float = 1.0
    healthy_threshold: int = 2
    record_exceptions: ExceptionTypes = (Exception,)
    ignore_exceptions: ExceptionTypes = ()
    is_failure: Callable[[BaseException], bool] | None = field(default=None, compare=False)
    is_failure_result: Callable[[Any], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        errors: list[ValueError] = []

        def check(function: Callable[..., None], *args: Any, **kwargs: Any) -> bool:
            try:
                function(*args, **kwargs)
            except ValueError as exc:
                errors.append(exc)
                return False
            return True

        check(_check_count, "failure_threshold", self.failure_threshold, allow_none=True)
        check(_check_rate, "failure_rate_threshold", self.failure_rate_threshold, allow_none=True)
        check(_check_seconds, "slow_call_duration", self.slow_call_duration, allow_none=True)
        check(_check_rate, "slow_call_rate_threshold", self.slow_call_rate_threshold, allow_none=False)
        check(_check_count, "minimum_calls", self.minimum_calls, allow_none=False)
        if self.window_type == "count":
            check(_check_count, "window_size", self.window_size, allow_none=False, maximum=MAX_COUNT_WINDOW,
                  unit=" calls")
        elif self.window_type == "time":
            check(_check_seconds, "window_size", self.window_size, allow_none=False, maximum=MAX_TIME_WINDOW)
        else:
            errors.append(ValueError(f"window_type: {shown(self.window_type)} is not allowed; use 'time' or 'count'"))
        open_ok = check(_check_seconds, "open_timeout", self.open_timeout, allow_none=False)
        check(_check_range, "backoff_multiplier", self.backoff_multiplier, 1.0, _MAX_BACKOFF,
              f"a finite number >= 1.0, at most {_MAX_BACKOFF:g}")
        max_ok = check(_check_seconds, "max_open_timeout", self.max_open_timeout, allow_none=False)
        if open_ok and max_ok and self.max_open_timeout < self.open_timeout:
            errors.append(ValueError(
                f"max_open_timeout: {shown(self.max_open_timeout)} is below open_timeout "
                f"{shown(self.open_timeout)}; use a value >= open_timeout"
            ))
        check(_check_range, "jitter", self.jitter, 0.0, 1.0, "a fraction in [0, 1]")
        check(_check_count, "half_open_max_calls", self.half_open_max_calls, allow_none=False)
        check(_check_count, "success_threshold", self.success_threshold, allow_none=False)
        check(_check_seconds, "call_timeout", self.call_timeout, allow_none=True)
        if not isinstance(self.adaptive, bool):
            errors.append(ValueError(f"adaptive: {shown(self.adaptive)} is not allowed; use true or false"))
        check(_check_seconds, "health_check_interval", self.health_check_interval, allow_none=True)
        check(_check_seconds, "health_check_timeout", self.health_check_timeout, allow_none=False)
        check(_check_count, "healthy_threshold", self.healthy_threshold, allow_none=False)
        check(_check_exception_types, "record_exceptions", self.record_exceptions)
        check(_check_exception_types, "ignore_exceptions", self.ignore_exceptions)
        for name in ("is_failure", "is_failure_result"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                errors.append(ValueError(f"{name}: {shown(value)} is not allowed; use a callable or None"))
        Problems.raise_if_any(errors)

    # -- construction helpers -------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CircuitBreakerConfig:
        """Return the named preset with ``overrides`` applied.

        Presets: ``default``, ``aggressive``, ``lenient``, ``http_api``,
        ``llm_service``, ``database``, ``cache``, ``notifications``.

        Raises:
            ValueError: for an unknown preset name or a bad override.
        """
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"preset: {shown(name)} is not a preset; use one of {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> CircuitBreakerConfig:
        """Build a config from plain data, as read from YAML or TOML.

        Accepts the field names plus ``preset:``; durations (a time window's
        ``window_size`` included) may be strings such as ``"30s"``, ``"500ms"``
        or ``"2m"``; exception types may be given as dotted names
        (``"builtins.TimeoutError"``, ``"myapp.errors.Busy"``: naming a module
        imports it).

        Raises:
            ValueError: naming the field, the value and what is allowed (every
                problem found, not only the first).
        """
        return config_from_dict(mapping, import_modules=True)

    def replace(self, **changes: Any) -> CircuitBreakerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def config_from_dict(mapping: Mapping[str, Any], *, import_modules: bool) -> CircuitBreakerConfig:
    """``CircuitBreakerConfig.from_dict``; with ``import_modules=False`` no module is imported.

    Without imports, a dotted exception name in a module not imported yet is
    checked by finding the module and reading its source (no code of it runs)
    and stands in as ``Exception``: the result is fit for checking a config
    only, which is what ``otel-cb config check`` and ``otel-cb-instrument``
    (before the application starts) use it for.

    Raises:
        ValueError: every problem found (``Problems`` when there are several).
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(f"circuit breaker config: {shown(mapping)} is not a mapping of settings")
    errors: list[ValueError] = []
    data = dict(mapping)
    preset = data.pop("preset", "default")
    if not isinstance(preset, str) or preset not in PRESETS:
        errors.append(ValueError(f"preset: {shown(preset)} is not a preset; use one of {', '.join(sorted(PRESETS))}"))
        preset = "default"
    known = [f.name for f in dataclasses.fields(CircuitBreakerConfig)]
    for key in list(data):
        if key not in known:
            errors.append(ValueError(f"{key}: {unknown_key(key, data.pop(key), known, 'setting')}"))
    window_type = data.get("window_type", PRESETS[preset].get("window_type", "time"))
    durations = (*_DURATION_FIELDS, "window_size") if window_type == "time" else _DURATION_FIELDS
    for key in durations:
        if key in data and data[key] is not None:
            try:
                data[key] = parse_duration(key, data[key])
            except ValueError as exc:
                errors.append(exc)
                del data[key]
    for key in ("record_exceptions", "ignore_exceptions"):
        if key in data:
            try:
                data[key] = _resolve_exception_types(key, data[key], import_modules)
            except ValueError as exc:
                errors.append(exc)
                del data[key]
    try:
        config = CircuitBreakerConfig.preset(preset, **data)
    except ValueError as exc:
        errors.append(exc)
    Problems.raise_if_any(errors)
    return config


_DURATION_FIELDS = ("slow_call_duration", "open_timeout", "max_open_timeout", "call_timeout",
                    "health_check_interval", "health_check_timeout")


def _service_preset(failure: int, success: int, open_timeout: float, probes: int, minimum: int) -> dict[str, Any]:
    return {
        "failure_threshold": failure,
        "success_threshold": success,
        "open_timeout": open_timeout,
        "half_open_max_calls": probes,
        "minimum_calls": minimum,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "aggressive": {
        "failure_threshold": 3,
        "failure_rate_threshold": 0.3,
        "slow_call_duration": 2.0,
        "slow_call_rate_threshold": 0.3,
        "minimum_calls": 5,
        "window_size": 30,
        "open_timeout": 10.0,
        "backoff_multiplier": 2.0,
        "max_open_timeout": 120.0,
        "success_threshold": 5,
        "half_open_max_calls": 2,
    },
    "lenient": {
        "failure_threshold": 10,
        "failure_rate_threshold": 0.7,
        "slow_call_duration": 10.0,
        "slow_call_rate_threshold": 0.7,
        "minimum_calls": 20,
        "window_size": 120,
        "open_timeout": 60.0,
        "backoff_multiplier": 1.0,
        "max_open_timeout": 600.0,
        "success_threshold": 2,
        "half_open_max_calls": 5,
    },
    "http_api": _service_preset(5, 2, 30.0, 3, 10),
    "llm_service": _service_preset(3, 2, 120.0, 2, 5),
    "database": _service_preset(10, 3, 10.0, 5, 20),
    "cache": _service_preset(8, 3, 20.0, 4, 15),
    "notifications": _service_preset(10, 2, 60.0, 3, 15),
}


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or not math.isnan(value)


def _check_range(name: str, value: object, low: float, high: float, allowed: str) -> None:
    # Comparisons only: an int too large for a float compares exactly, where float() would overflow.
    if not _is_number(value) or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{name}: {shown(value)} is not allowed; use {allowed}")


def _check_seconds(name: str, value: object, *, allow_none: bool, maximum: float = MAX_SECONDS) -> None:
    if value is None and allow_none:
        return
    allowed = "a positive, finite number of seconds" + (" or None" if allow_none else "")
    allowed += f", at most {_seconds(maximum)}"
    if not _is_number(value) or not 0 < value <= maximum:  # type: ignore[operator]
        raise ValueError(f"{name}: {shown(value)} is not allowed; use {allowed}")


def _check_rate(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    allowed = "a ratio in (0, 1]" + (" or None" if allow_none else "")
    if not _is_number(value) or not 0.0 < value <= 1.0:  # type: ignore[operator]
        raise ValueError(f"{name}: {shown(value)} is not allowed; use {allowed}")


def _check_count(name: str, value: object, *, allow_none: bool, maximum: int = MAX_COUNT, unit: str = "") -> None:
    if value is None and allow_none:
        return
    allowed = "a whole number >= 1" + (" or None" if allow_none else "") + f", at most {maximum:,}{unit}"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name}: {shown(value)} is not allowed; use {allowed}")


def _check_exception_types(name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise ValueError(f"{name}: {shown(value)} is not allowed; use a tuple of exception classes")


_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_MAX_EXCEPTION_NAMES = 100
# Standard-library modules whose import does something visible; every other one is safe to import to check.
_NO_IMPORT = frozenset({"this", "antigravity", "__hello__", "__phello__", "idlelib", "turtle", "turtledemo", "tkinter",
                        "webbrowser", "pydoc"})


def _resolve_exception_types(name: str, value: object, import_modules: bool) -> ExceptionTypes:
    items = [value] if isinstance(value, (str, type)) else value
    if not isinstance(items, (list, tuple)) or len(items) > _MAX_EXCEPTION_NAMES:
        raise ValueError(f"{name}: {shown(value)} is not allowed; use a list of exception classes or dotted names "
                         f"such as 'TimeoutError' or 'myapp.errors.Busy' (at most {_MAX_EXCEPTION_NAMES})")
    resolved: list[type[BaseException]] = []
    errors: list[ValueError] = []
    for item in items:
        try:
            resolved.append(_exception_type(name, item, import_modules))
        except ValueError as exc:
            errors.append(exc)
    Problems.raise_if_any(errors)
    return tuple(resolved)


def _exception_type(name: str, item: object, import_modules: bool) -> type[BaseException]:
    original = item
    if isinstance(item, str):
        if len(item) > 200 or not _DOTTED.match(item):
            raise ValueError(f"{name}: {shown(item)} is not allowed; use an exception class name such as "
                             "'TimeoutError' or a dotted name such as 'myapp.errors.Busy'")
        module_name, _, attr = item.rpartition(".")
        module_name = module_name or "builtins"
        module = sys.modules.get(module_name)
        if module is None:
            # Found and read first, never run: a name that is not there is an error without importing anything.
            _check_exists_unimported(name, item, module_name, attr)
            top = module_name.partition(".")[0]
            if not import_modules and not (top in sys.stdlib_module_names and top not in _NO_IMPORT):
                return Exception  # stands in: checking only, see config_from_dict
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise ValueError(f"{name}: {shown(item)} does not name an importable exception class (importing "
                                 f"{module_name} failed: {type(exc).__name__}: {shown(str(exc), 120)[1:-1]})"
                                 ) from None
        candidate = getattr(module, attr, None)
        if candidate is None:
            raise ValueError(f"{name}: {shown(item)} does not name an importable exception class "
                             f"(module {module_name} has no attribute {attr})")
        item = candidate
    if not (isinstance(item, type) and issubclass(item, BaseException)):
        raise ValueError(f"{name}: {shown(original)} is not an exception class")
    return item


def _check_exists_unimported(name: str, item: str, module_name: str, attr: str) -> None:
    """Find ``module_name`` and the name ``attr`` in its source without running any of its code."""
    from importlib.machinery import PathFinder

    parts = module_name.split(".")
    spec = None
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        parent = sys.modules.get(".".join(parts[: depth - 1])) if depth > 1 else None
        try:
            if depth == 1 or parent is not None:
                # A top-level name, or a child of an imported package: finders run, no module code does.
                spec = importlib.util.find_spec(prefix)
                if spec is None and depth == 1:
                    # Where the application will look too: the current directory and PYTHONPATH, which a
                    # console script (otel-cb, otel-cb-instrument) does not have on its own sys.path.
                    spec = PathFinder.find_spec(prefix, _application_path())
            else:
                locations = spec.submodule_search_locations if spec is not None else None
                spec = PathFinder.find_spec(prefix, list(locations)) if locations is not None else None
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise ValueError(f"{name}: {shown(item)} does not name an importable exception class "
                             f"(no module named {prefix})")
    assert spec is not None
    found = _module_names(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    if found is None or "__getattr__" in found[0]:
        return
    names, literals = found
    if attr in literals:
        raise ValueError(f"{name}: {shown(item)} is not an exception class (module {module_name} sets it to a "
                         "literal value)")
    if attr not in names:
        raise ValueError(f"{name}: {shown(item)} does not name an importable exception class "
                         f"(module {module_name} has no attribute {attr})")


def _application_path() -> list[str]:
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [os.getcwd(), *extra]


@functools.lru_cache(maxsize=64)
def _module_names(origin: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """The names a module's source binds at module level, and those of them only ever bound to a literal.

    None when that cannot be known without running it.
    """
    import ast

    try:
        with open(origin, "rb") as source:
            tree = ast.parse(source.read(2_000_000), origin)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # importing it would say what is wrong; reading cannot
    literals = (ast.Constant, ast.Dict, ast.List, ast.Tuple, ast.Set, ast.JoinedStr)
    names: set[str] = set()
    literal: set[str] = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Assign) and isinstance(node.value, literals):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if len(targets) == len(node.targets):
                literal.update(targets)
                continue
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
            # Their bodies bind no module names, unless they declare them global.
            if any(isinstance(inner, ast.Global) for inner in ast.walk(node)):
                return None
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.partition(".")[0])
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "globals", "setattr", "exec", "vars"):
            return None
        pending.extend(ast.iter_child_nodes(node))
    return frozenset(names | literal), frozenset(literal - names)
