"""CircuitBreakerConfig: defaults, validation messages, presets and from_dict."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from otel_cb import CircuitBreakerConfig


def test_defaults_are_the_documented_ones() -> None:
    config = CircuitBreakerConfig()
    assert dataclasses.asdict(config) == {
        "failure_threshold": 5, "failure_rate_threshold": 0.5, "slow_call_duration": 5.0,
        "slow_call_rate_threshold": 0.5, "minimum_calls": 10, "window_type": "time", "window_size": 60,
        "open_timeout": 30.0, "backoff_multiplier": 1.0, "max_open_timeout": 300.0, "jitter": 0.0,
        "half_open_max_calls": 3, "success_threshold": 3, "call_timeout": None,
        "adaptive": True, "health_check_interval": 2.0, "health_check_timeout": 1.0, "healthy_threshold": 2,
        "record_exceptions": (Exception,), "ignore_exceptions": (), "is_failure": None, "is_failure_result": None,
    }


def test_config_is_frozen() -> None:
    config = CircuitBreakerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.open_timeout = 1.0  # type: ignore[misc]
    assert config.replace(open_timeout=1.0).open_timeout == 1.0


BAD: list[tuple[dict[str, Any], str, str]] = [
    # (settings, field and value in the message, what the message allows)
    ({"adaptive": "yes"}, "adaptive: 'yes'", "true or false"),
    ({"adaptive": 1}, "adaptive: 1", "true or false"),
    ({"health_check_interval": 0}, "health_check_interval: 0", "positive, finite number of seconds or None"),
    ({"health_check_timeout": None}, "health_check_timeout: None", "positive, finite number of seconds"),
    ({"health_check_timeout": -1.0}, "health_check_timeout: -1.0", "positive, finite number of seconds"),
    ({"healthy_threshold": 0}, "healthy_threshold: 0", "whole number >= 1"),
    ({"failure_threshold": 0}, "failure_threshold: 0", "whole number >= 1 or None"),
    ({"failure_threshold": 2.5}, "failure_threshold: 2.5", "whole number >= 1"),
    ({"failure_threshold": True}, "failure_threshold: True", "whole number >= 1"),
    ({"failure_rate_threshold": 0}, "failure_rate_threshold: 0", "(0, 1] or None"),
    ({"failure_rate_threshold": 1.5}, "failure_rate_threshold: 1.5", "(0, 1]"),
    ({"failure_rate_threshold": -0.1}, "failure_rate_threshold: -0.1", "(0, 1]"),
    ({"failure_rate_threshold": "half"}, "failure_rate_threshold: 'half'", "ratio in (0, 1]"),
    ({"slow_call_rate_threshold": 0.0}, "slow_call_rate_threshold: 0.0", "(0, 1]"),
    ({"slow_call_rate_threshold": None}, "slow_call_rate_threshold: None", "(0, 1]"),
    ({"slow_call_duration": 0}, "slow_call_duration: 0", "positive, finite number of seconds or None"),
    ({"slow_call_duration": -1.0}, "slow_call_duration: -1.0", "positive"),
    ({"minimum_calls": 0}, "minimum_calls: 0", "whole number >= 1"),
    ({"window_type": "sliding"}, "window_type: 'sliding'", "'time' or 'count'"),
    ({"window_size": 0}, "window_size: 0", "positive"),
    ({"window_type": "count", "window_size": 2.5}, "window_size: 2.5", "whole number >= 1"),
    ({"open_timeout": 0}, "open_timeout: 0", "positive, finite number of seconds"),
    ({"open_timeout": -5}, "open_timeout: -5", "positive"),
    ({"open_timeout": float("inf")}, "open_timeout: inf", "finite"),
    ({"open_timeout": float("nan")}, "open_timeout: nan", "positive, finite number of seconds"),
    ({"open_timeout": "30s"}, "open_timeout: '30s'", "number of seconds"),
    ({"backoff_multiplier": 0.5}, "backoff_multiplier: 0.5", ">= 1.0"),
    ({"backoff_multiplier": float("inf")}, "backoff_multiplier: inf", "finite number >= 1.0"),
    ({"max_open_timeout": 10.0}, "max_open_timeout: 10.0 is below open_timeout 30.0", ">= open_timeout"),
    ({"jitter": 1.5}, "jitter: 1.5", "[0, 1]"),
    ({"jitter": -0.1}, "jitter: -0.1", "[0, 1]"),
    ({"half_open_max_calls": 0}, "half_open_max_calls: 0", "whole number >= 1"),
    ({"success_threshold": 0}, "success_threshold: 0", "whole number >= 1"),
    ({"call_timeout": 0}, "call_timeout: 0", "positive, finite number of seconds or None"),
    ({"record_exceptions": [ValueError]}, "record_exceptions: [", "tuple of exception classes"),
    ({"ignore_exceptions": (int,)}, "ignore_exceptions: (", "tuple of exception classes"),
    ({"is_failure": "yes"}, "is_failure: 'yes'", "callable or None"),
    ({"is_failure_result": 5}, "is_failure_result: 5", "callable or None"),
]


@pytest.mark.parametrize(("settings", "named", "allowed"), BAD, ids=[next(iter(b[0])) for b in BAD])
def test_a_bad_value_names_field_value_and_what_is_allowed(settings: dict[str, Any], named: str,
                                                           allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        CircuitBreakerConfig(**settings)
    message = str(info.value)
    assert message.startswith(named) and allowed in message, message


def test_rules_can_be_switched_off() -> None:
    config = CircuitBreakerConfig(failure_threshold=None, failure_rate_threshold=None, slow_call_duration=None)
    assert (config.failure_threshold, config.failure_rate_threshold, config.slow_call_duration) == (None, None, None)


PRESETS = {
    # failure / success threshold, open timeout, probes, minimum calls
    "http_api": (5, 2, 30.0, 3, 10),
    "llm_service": (3, 2, 120.0, 2, 5),
    "database": (10, 3, 10.0, 5, 20),
    "cache": (8, 3, 20.0, 4, 15),
    "notifications": (10, 2, 60.0, 3, 15),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_service_presets(name: str) -> None:
    config = CircuitBreakerConfig.preset(name)
    assert (config.failure_threshold, config.success_threshold, config.open_timeout, config.half_open_max_calls,
            config.minimum_calls) == PRESETS[name]
    # Everything else is the default.
    rest = {f.name for f in dataclasses.fields(config)} - {
        "failure_threshold", "success_threshold", "open_timeout", "half_open_max_calls", "minimum_calls"}
    default = CircuitBreakerConfig()
    assert {k: getattr(config, k) for k in rest} == {k: getattr(default, k) for k in rest}


RATE_PRESET_FIELDS = ("failure_threshold", "failure_rate_threshold", "slow_call_duration",
                      "slow_call_rate_threshold", "minimum_calls", "window_size", "open_timeout",
                      "backoff_multiplier", "max_open_timeout", "success_threshold", "half_open_max_calls")


@pytest.mark.parametrize(("name", "expected"), [
    ("default", (5, 0.5, 5.0, 0.5, 10, 60, 30.0, 1.0, 300.0, 3, 3)),
    ("aggressive", (3, 0.3, 2.0, 0.3, 5, 30, 10.0, 2.0, 120.0, 5, 2)),
    ("lenient", (10, 0.7, 10.0, 0.7, 20, 120, 60.0, 1.0, 600.0, 2, 5)),
])
def test_default_aggressive_and_lenient_presets(name: str, expected: tuple[float, ...]) -> None:
    config = CircuitBreakerConfig.preset(name)
    assert tuple(getattr(config, field) for field in RATE_PRESET_FIELDS) == expected


def test_preset_overrides_and_unknown_presets() -> None:
    assert CircuitBreakerConfig.preset("database", open_timeout=5).open_timeout == 5
    with pytest.raises(ValueError, match=r"^preset: 'fast' is not a preset; use one of aggressive, cache, "):
        CircuitBreakerConfig.preset("fast")
    with pytest.raises(ValueError, match=r"^success_threshold: 0 "):
        CircuitBreakerConfig.preset("cache", success_threshold=0)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (" 45 ", 45.0), (7, 7.0),
    (2.5, 2.5),
])
def test_from_dict_parses_durations(text: object, seconds: float) -> None:
    config = CircuitBreakerConfig.from_dict(
        {"open_timeout": text, "max_open_timeout": "10h", "slow_call_duration": text, "call_timeout": text,
         "window_size": text})
    assert config.open_timeout == config.slow_call_duration == config.call_timeout == seconds
    assert config.window_size == seconds and config.max_open_timeout == 36000.0


def test_from_dict_with_preset_exceptions_and_a_count_window() -> None:
    config = CircuitBreakerConfig.from_dict({
        "preset": "llm_service", "failure_threshold": 4, "window_type": "count", "window_size": 50,
        "record_exceptions": ["builtins.OSError", "TimeoutError"], "ignore_exceptions": "builtins.KeyError",
    })
    assert (config.failure_threshold, config.open_timeout, config.window_type, config.window_size) == (
        4, 120.0, "count", 50)
    assert config.record_exceptions == (OSError, TimeoutError) and config.ignore_exceptions == (KeyError,)


@pytest.mark.parametrize(("mapping", "message"), [
    ({"bogus": 1}, r"^bogus: unknown setting \(value 1\); allowed settings: adaptive, backoff_multiplier, "),
    ({"open_timeout": "soon"}, r"^open_timeout: 'soon' is not a duration; use seconds or a string like '30s'"),
    ({"open_timeout": "-5s"}, r"^open_timeout: '-5s' is not a duration"),
    ({"open_timeout": True}, r"^open_timeout: True is not a duration"),
    ({"open_timeout": "0s"}, r"^open_timeout: 0.0 is not allowed; use a positive"),
    ({"window_size": "forever"}, r"^window_size: 'forever' is not a duration"),
    ({"window_type": "count", "window_size": "30s"}, r"^window_size: '30s' is not allowed; use a whole number"),
    ({"preset": "quick"}, r"^preset: 'quick' is not a preset"),
    ({"record_exceptions": ["no.such.Error"]}, r"^record_exceptions: 'no.such.Error' does not name an importable"),
    ({"record_exceptions": ["builtins.len"]}, r"^record_exceptions: 'builtins.len' is not an exception class"),
    ({"ignore_exceptions": 5}, r"^ignore_exceptions: 5 is not allowed; use a list of exception classes"),
    ({"failure_rate_threshold": 2}, r"^failure_rate_threshold: 2 is not allowed; use a ratio in \(0, 1\]"),
])
def test_from_dict_errors_name_field_value_and_what_is_allowed(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreakerConfig.from_dict(mapping)


def test_from_dict_rejects_what_is_not_a_mapping() -> None:
    with pytest.raises(ValueError, match=re.escape("circuit breaker config: [1] is not a mapping")):
        CircuitBreakerConfig.from_dict([1])  # type: ignore[arg-type]
