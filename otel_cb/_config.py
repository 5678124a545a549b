"""`CircuitBreakerConfig`: the validated, immutable settings of one breaker, and its presets.

Validation happens once, at construction, so the call path never re-checks a
value. Parsing of human durations (``"30s"``) lives here too because
``from_dict`` is the one door through which configuration files come in.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CircuitBreakerConfig", "parse_duration", "PRESETS"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(field_name: str, value: object) -> float:
    """Return seconds for a number or a string such as ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"``.

    Raises:
        ValueError: naming the field, the value and the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(_duration_error(field_name, value))
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(_duration_error(field_name, value))


def _duration_error(field_name: str, value: object) -> str:
    return f"{field_name}: {value!r} is not a duration; use seconds or a string like '30s', '500ms', '2m'"


ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True, slots=True)
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
    record_exceptions: ExceptionTypes = (Exception,)
    ignore_exceptions: ExceptionTypes = ()
    is_failure: Callable[[BaseException], bool] | None = field(default=None, compare=False)
    is_failure_result: Callable[[Any], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_threshold("failure_threshold", self.failure_threshold, allow_none=True)
        _check_rate("failure_rate_threshold", self.failure_rate_threshold, allow_none=True)
        _check_positive("slow_call_duration", self.slow_call_duration, allow_none=True)
        _check_rate("slow_call_rate_threshold", self.slow_call_rate_threshold, allow_none=False)
        _check_threshold("minimum_calls", self.minimum_calls, allow_none=False)
        if self.window_type not in ("time", "count"):
            raise ValueError(f"window_type: {self.window_type!r} is not allowed; use 'time' or 'count'")
        if self.window_type == "count":
            _check_threshold("window_size", self.window_size, allow_none=False)
        else:
            _check_positive("window_size", self.window_size, allow_none=False)
        _check_positive("open_timeout", self.open_timeout, allow_none=False)
        _check_number("backoff_multiplier", self.backoff_multiplier, "a finite number >= 1.0")
        if not 1.0 <= self.backoff_multiplier < math.inf:
            raise ValueError(
                f"backoff_multiplier: {self.backoff_multiplier!r} is not allowed; use a finite number >= 1.0")
        _check_positive("max_open_timeout", self.max_open_timeout, allow_none=False)
        if self.max_open_timeout < self.open_timeout:
            raise ValueError(
                f"max_open_timeout: {self.max_open_timeout!r} is below open_timeout "
                f"{self.open_timeout!r}; use a value >= open_timeout"
            )
        _check_number("jitter", self.jitter, "a fraction in [0, 1]")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter: {self.jitter!r} is not allowed; use a fraction in [0, 1]")
        _check_threshold("half_open_max_calls", self.half_open_max_calls, allow_none=False)
        _check_threshold("success_threshold", self.success_threshold, allow_none=False)
        _check_positive("call_timeout", self.call_timeout, allow_none=True)
        _check_exception_types("record_exceptions", self.record_exceptions)
        _check_exception_types("ignore_exceptions", self.ignore_exceptions)
        for name in ("is_failure", "is_failure_result"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"{name}: {value!r} is not allowed; use a callable or None")

    # -- construction helpers -------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CircuitBreakerConfig:
        """Return the named preset with ``overrides`` applied.

        Presets: ``default``, ``aggressive``, ``lenient``, ``http_api``,
        ``llm_service``, ``database``, ``cache``, ``notifications``.

        Raises:
            ValueError: for an unknown preset name or a bad override.
        """
        if name not in PRESETS:
            raise ValueError(f"preset: {name!r} is not a preset; use one of {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> CircuitBreakerConfig:
        """Build a config from plain data, as read from YAML or TOML.

        Accepts the field names plus ``preset:``; durations (a time window's
        ``window_size`` included) may be strings such as ``"30s"``, ``"500ms"``
        or ``"2m"``; exception types may be given as dotted names
        (``"builtins.TimeoutError"``).

        Raises:
            ValueError: naming the field, the value and what is allowed.
        """
        if not isinstance(mapping, Mapping):
            raise ValueError(f"circuit breaker config: {mapping!r} is not a mapping of settings")
        data = dict(mapping)
        preset = data.pop("preset", "default")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ValueError(f"preset: {preset!r} is not a preset; use one of {', '.join(sorted(PRESETS))}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(
                    f"{key}: unknown setting (value {data[key]!r}); allowed settings: {', '.join(sorted(known))}"
                )
        window_type = data.get("window_type", PRESETS[preset].get("window_type", "time"))
        durations = (*_DURATION_FIELDS, "window_size") if window_type == "time" else _DURATION_FIELDS
        for key in durations:
            if key in data and data[key] is not None:
                data[key] = parse_duration(key, data[key])
        for key in ("record_exceptions", "ignore_exceptions"):
            if key in data:
                data[key] = _resolve_exception_types(key, data[key])
        return cls.preset(preset, **data)

    def replace(self, **changes: Any) -> CircuitBreakerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


_DURATION_FIELDS = ("slow_call_duration", "open_timeout", "max_open_timeout", "call_timeout")


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


def _check_number(name: str, value: object, allowed: str = "a number") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name}: {value!r} is not allowed; use {allowed}")


def _check_positive(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    allowed = "a positive, finite number of seconds" + (" or None" if allow_none else "")
    _check_number(name, value, allowed)
    assert isinstance(value, (int, float))
    if value <= 0 or math.isinf(value):
        raise ValueError(f"{name}: {value!r} is not allowed; use {allowed}")


def _check_rate(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    allowed = "a ratio in (0, 1]" + (" or None" if allow_none else "")
    _check_number(name, value, allowed)
    assert isinstance(value, (int, float))
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: {value!r} is not allowed; use {allowed}")


def _check_threshold(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    extra = " or None" if allow_none else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: {value!r} is not allowed; use a whole number >= 1{extra}")
    if value < 1:
        raise ValueError(f"{name}: {value!r} is not allowed; use a whole number >= 1{extra}")


def _check_exception_types(name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise ValueError(f"{name}: {value!r} is not allowed; use a tuple of exception classes")


def _resolve_exception_types(name: str, value: object) -> ExceptionTypes:
    import importlib

    items = [value] if isinstance(value, (str, type)) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{name}: {value!r} is not allowed; use a list of exception classes or dotted names")
    resolved: list[type[BaseException]] = []
    for item in items:
        if isinstance(item, str):
            module_name, _, attr = item.rpartition(".")
            try:
                candidate = getattr(importlib.import_module(module_name or "builtins"), attr)
            except (ImportError, AttributeError, ValueError):
                raise ValueError(f"{name}: {item!r} does not name an importable exception class") from None
            item = candidate
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"{name}: {item!r} is not an exception class")
        resolved.append(item)
    return tuple(resolved)
