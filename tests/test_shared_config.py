"""The ``shared_state:`` section and the attach contract; no Redis server needed
(redis-py connects lazily and nothing here is attached long enough to talk)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from otel_cb import CircuitBreaker
from otel_cb.shared import RedisSharedState, from_config, running_locally

pytest.importorskip("redis")

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def made() -> Iterator[list[RedisSharedState]]:
    backends: list[RedisSharedState] = []
    yield backends
    for backend in backends:
        backend.close()


def test_from_config_returns_one_backend_per_setting(made: list[RedisSharedState]) -> None:
    first = from_config({"backend": "redis", "url": URL, "namespace": "checkout", "timeout": "20ms"})
    again = from_config({"backend": "redis", "url": URL, "namespace": "checkout", "timeout": 0.02})
    other = from_config({"backend": "redis", "url": URL, "namespace": "search"})
    made.extend([first, other])
    assert first is again
    assert other is not first
    assert first.namespace == "checkout" and first.timeout == pytest.approx(0.02)
    assert other.namespace == "search" and other.timeout == pytest.approx(0.05)
    first.close()
    assert from_config({"backend": "redis", "url": URL, "namespace": "checkout", "timeout": "20ms"}) is not first


@pytest.mark.parametrize(("section", "message"), [
    ({"backend": "memcached", "url": URL}, "shared_state.backend: 'memcached' is not allowed; use 'redis'"),
    ({"url": URL}, "shared_state.backend: None is not allowed; use 'redis'"),
    ({"backend": "redis"}, "shared_state.url: missing; use a redis://, rediss:// or unix:// URL"),
    ({"backend": "redis", "url": "http://127.0.0.1:6379"},
     "shared_state.url: 'http://127.0.0.1:6379' is not allowed; use a redis://, rediss:// or unix:// URL"),
    ({"backend": "redis", "url": 6379}, "shared_state.url: 6379 is not allowed"),
    ({"backend": "redis", "url": URL, "namespace": "a b"},
     "shared_state.namespace: 'a b' is not allowed; use 1 to 100 letters, digits or any of '_.:-'"),
    ({"backend": "redis", "url": URL, "namespace": "{x}"}, "shared_state.namespace: '{x}' is not allowed"),
    ({"backend": "redis", "url": URL, "timeout": "fast"}, "shared_state.timeout: 'fast' is not a duration"),
    ({"backend": "redis", "url": URL, "probe_lease": 0},
     "shared_state.probe_lease: 0.0 is not allowed; use a duration above 0 and below 1h"),
    ({"backend": "redis", "url": URL, "flush_interval": -1}, "shared_state.flush_interval: -1.0 is not allowed"),
    ({"backend": "redis", "url": URL, "pool_size": 3},
     "shared_state.pool_size: unknown field (value 3); allowed fields: backend, cluster, flush_interval, namespace"),
    (["redis"], "shared_state: ['redis'] is not allowed; use a mapping"),
])
def test_bad_sections_name_the_field_the_value_and_what_is_allowed(section: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        from_config(section)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_credentials_never_appear_in_errors_or_descriptions(made: list[RedisSharedState]) -> None:
    with pytest.raises(ValueError) as error:
        from_config({"backend": "redis", "url": "http://admin:hunter2@cache:6379/0"})
    assert "hunter2" not in str(error.value) and "admin" not in str(error.value)
    assert "***@cache:6379" in str(error.value)
    backend = RedisSharedState("redis://admin:hunter2@127.0.0.1:6379/0?ssl_cert_reqs=none", namespace="x")
    made.append(backend)
    assert "hunter2" not in repr(backend) and backend.where == "127.0.0.1:6379"


def test_constructor_rejects_bad_settings_too() -> None:
    with pytest.raises(ValueError, match=r"shared_state.sync_interval: -2 is not allowed"):
        RedisSharedState(URL, sync_interval=-2)
    with pytest.raises(ValueError, match=r"shared_state.url: 'redis://x' is not allowed together with client"):
        RedisSharedState("redis://x", client=object())  # type: ignore[arg-type]


def test_attach_contract(made: list[RedisSharedState]) -> None:
    backend = RedisSharedState(URL, namespace="attach-contract")
    made.append(backend)
    breaker = CircuitBreaker("payments")
    assert not running_locally(breaker)  # no shared state: never "running locally"
    assert backend.attach(breaker) is breaker
    assert breaker.shared_state is not None
    with pytest.raises(ValueError, match="already has shared state attached"):
        backend.attach(breaker)
    with pytest.raises(ValueError, match="another breaker named 'payments' is attached"):
        backend.attach(CircuitBreaker("payments"))
    backend.detach(breaker)
    assert breaker.shared_state is None
    backend.attach(breaker)
    backend.close()
    assert breaker.shared_state is None  # closing hands every breaker back to its local state
    with pytest.raises(ValueError, match="is closed"):
        backend.attach(CircuitBreaker("search"))


def test_importing_otel_cb_shared_does_not_import_redis() -> None:
    code = "import sys, otel_cb.shared; print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_validate_settings_checks_the_section_without_connecting() -> None:
    from otel_cb.shared import validate_settings

    validate_settings("payments", {"failure_statuses": [503]})  # no shared_state: nothing to check
    validate_settings("payments", {"shared_state": {"backend": "redis", "url": "redis://nowhere.invalid:1/0"}})
    with pytest.raises(ValueError, match=r"shared_state.timeout: 'soon' is not a duration"):
        validate_settings("payments", {"shared_state": {"backend": "redis", "url": URL, "timeout": "soon"}})
