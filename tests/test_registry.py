"""CircuitBreakerRegistry: one name, one breaker."""

from __future__ import annotations

import threading

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerRegistry, _observers, registry

from .conftest import FakeClock


def test_get_or_create_returns_the_same_breaker_for_a_name() -> None:
    reg = CircuitBreakerRegistry()
    config = CircuitBreakerConfig(failure_threshold=3)
    first = reg.get_or_create("payments", config)
    assert reg.get_or_create("payments") is first
    assert reg.get_or_create("payments", CircuitBreakerConfig(failure_threshold=3)) is first  # an equal config
    assert first.config is config and first.name == "payments"


def test_a_different_config_for_an_existing_name_is_an_error() -> None:
    reg = CircuitBreakerRegistry()
    reg.get_or_create("payments")
    with pytest.raises(ValueError, match=r"^name: circuit breaker 'payments' already exists with a different config"):
        reg.get_or_create("payments", CircuitBreakerConfig(failure_threshold=1))


def test_get_iter_len_contains_remove_and_clear() -> None:
    reg = CircuitBreakerRegistry()
    a, b = reg.get_or_create("a"), reg.get_or_create("b")
    assert reg.get("a") is a and reg.get("missing") is None
    assert {cb.name for cb in reg} == {"a", "b"} and len(reg) == 2 and "a" in reg
    assert reg.remove("a") is a and reg.remove("a") is None
    assert list(reg) == [b]
    assert reg.get_or_create("a") is not a  # a removed name can be made again
    reg.clear()
    assert len(reg) == 0


def test_add_registers_a_hand_made_breaker_once() -> None:
    reg = CircuitBreakerRegistry()
    mine = CircuitBreaker("mine")
    assert reg.add(mine) is mine and reg.add(mine) is mine
    with pytest.raises(ValueError, match=r"^name: a circuit breaker called 'mine' is already registered"):
        reg.add(CircuitBreaker("mine"))
    assert reg.get_or_create("mine") is mine


def test_iterating_while_another_thread_adds_is_safe() -> None:
    reg = CircuitBreakerRegistry()
    for i in range(100):
        reg.get_or_create(f"b{i}")
    seen = []
    for breaker in reg:
        reg.get_or_create(f"new-{breaker.name}")  # changes the registry mid-iteration
        seen.append(breaker.name)
    assert len(seen) == 100 and len(reg) == 200


def test_concurrent_get_or_create_makes_one_breaker() -> None:
    reg = CircuitBreakerRegistry()
    barrier = threading.Barrier(8)
    results: list[CircuitBreaker] = []

    def worker() -> None:
        barrier.wait(timeout=10)
        for _ in range(200):
            results.append(reg.get_or_create("shared"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 1600 and len({id(cb) for cb in results}) == 1


def test_an_observer_may_use_the_registry_when_a_breaker_is_made() -> None:
    reg = CircuitBreakerRegistry()

    class Counting:
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def breaker_created(self, breaker: CircuitBreaker) -> None:
            self.sizes.append(len(list(reg)))

    observer = Counting()
    _observers.add_observer(observer)
    try:
        reg.get_or_create("first")
    finally:
        _observers.remove_observer(observer)
    assert observer.sizes == [0]


def test_the_registry_hands_its_clock_to_new_breakers(clock: FakeClock) -> None:
    reg = CircuitBreakerRegistry(clock=clock)
    cb = reg.get_or_create("timed", CircuitBreakerConfig(failure_threshold=1, open_timeout=5))
    cb.acquire().record_failure()
    assert cb.snapshot().retry_after == 5
    clock.advance(4.5)
    assert cb.snapshot().retry_after == 0.5
    clock.advance(0.5)
    assert cb.snapshot().state.value == "half_open"  # the open timeout elapsed on the registry's clock


def test_the_process_wide_registry() -> None:
    assert isinstance(registry, CircuitBreakerRegistry)
    name = "test_registry.process_wide"
    try:
        assert registry.get_or_create(name) is registry.get(name)
    finally:
        registry.remove(name)
