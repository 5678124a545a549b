"""instrument() / uninstrument(), wrapt patching (otel_cb._patching) and the router (otel_cb._routing)."""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt

import otel_cb
from otel_cb import CircuitBreakerConfig, ConfigError, _patching, _plugins
from otel_cb._routing import OVERFLOW_BREAKER, destination_name
from otel_cb.plugin import Call, Patch, hookimpl, select_breaker

_names = itertools.count()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_plugins, "_entry_points", lambda: [])
    monkeypatch.delenv("OTEL_CB_DISABLED", raising=False)
    yield
    otel_cb.uninstrument()


@pytest.fixture
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a not-yet-imported module with a class and a function to patch."""
    name = f"cbfake_{next(_names)}_{id(tmp_path)}"
    (tmp_path / f"{name}.py").write_text(
        "class Client:\n"
        "    def send(self, x):\n"
        "        return ('sent', x)\n"
        "\n"
        "def connect(x):\n"
        "    return ('connected', x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def tagging(tag: str) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return (tag, wrapped(*args, **kwargs))
    return wrapper


class Patches:
    def __init__(self, *patches: Patch) -> None:
        self.patches = list(patches)

    @hookimpl
    def otel_cb_patches(self) -> list[Patch]:
        return self.patches


# -- lifecycle --------------------------------------------------------------------


def test_instrument_is_idempotent_and_works_again_after_uninstrument(fake_module: str) -> None:
    plugin = Patches(Patch(fake_module, "connect", tagging("ours"), "fake"))
    otel_cb.instrument({}, plugins=[plugin])
    otel_cb.instrument({}, plugins=[plugin])
    module = importlib.import_module(fake_module)
    assert module.connect(1) == ("ours", ("connected", 1))  # one layer, not two
    otel_cb.uninstrument()
    otel_cb.uninstrument()
    assert module.connect(1) == ("connected", 1)
    otel_cb.instrument({}, plugins=[plugin])
    assert module.connect(1) == ("ours", ("connected", 1))


def test_configured_breakers_are_registered_and_removed() -> None:
    mine = otel_cb.registry.get_or_create("hand_made")
    otel_cb.instrument({"circuit_breakers": {"payments": {"preset": "aggressive"}, "hand_made": {}}})
    assert otel_cb.registry.get("payments").config == CircuitBreakerConfig.preset("aggressive")  # type: ignore[union-attr]
    otel_cb.uninstrument()
    assert "payments" not in otel_cb.registry
    assert otel_cb.registry.get("hand_made") is mine  # not ours to remove
    otel_cb.registry.remove("hand_made")


def test_a_changed_config_reinstruments() -> None:
    otel_cb.instrument({"circuit_breakers": {"a": {}}})
    otel_cb.instrument({"circuit_breakers": {"b": {}}})
    assert "a" not in otel_cb.registry and "b" in otel_cb.registry


def test_an_invalid_config_changes_nothing() -> None:
    otel_cb.instrument({"circuit_breakers": {"a": {}}})
    with pytest.raises(ConfigError):
        otel_cb.instrument({"circuit_breakers": {"a": {"preset": "nope"}}})
    assert "a" in otel_cb.registry
    assert select_breaker(Call("http", "http://x:80")) is not None


def test_disabled_integrations_are_not_patched(fake_module: str) -> None:
    plugin = Patches(Patch(fake_module, "connect", tagging("ours"), "fake"))
    otel_cb.instrument({}, plugins=[plugin], disabled=["fake"])
    assert importlib.import_module(fake_module).connect(1) == ("connected", 1)


# -- patching ---------------------------------------------------------------------


def test_patch_applies_on_import_and_at_once(fake_module: str) -> None:
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "Client.send", tagging("ours"), "fake"))])
    assert fake_module not in sys.modules  # nothing imported eagerly
    module = importlib.import_module(fake_module)
    assert module.Client().send(2) == ("ours", ("sent", 2))
    otel_cb.uninstrument()
    assert module.Client().send(2) == ("sent", 2)
    # already imported: applied at once
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "Client.send", tagging("again"), "fake"))])
    assert module.Client().send(2) == ("again", ("sent", 2))


def test_round_trip_restores_the_original_objects(fake_module: str) -> None:
    module = importlib.import_module(fake_module)
    original_function, original_method = module.connect, module.Client.__dict__["send"]
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "connect", tagging("ours"), "fake"),
                                            Patch(fake_module, "Client.send", tagging("ours"), "fake"))])
    assert module.connect is not original_function
    otel_cb.uninstrument()
    assert module.connect is original_function
    assert module.Client.__dict__["send"] is original_method


def test_uninstrument_keeps_a_wrapper_put_on_top_of_ours(fake_module: str) -> None:
    module = importlib.import_module(fake_module)
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "connect", tagging("ours"), "fake"))])
    # as OpenTelemetry's instrumentors do, after ours
    wrapt.wrap_function_wrapper(module, "connect", tagging("otel"))
    assert module.connect(3) == ("otel", ("ours", ("connected", 3)))
    otel_cb.uninstrument()
    assert module.connect(3) == ("otel", ("connected", 3))
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "connect", tagging("ours"), "fake"))])
    # applied after it this time, ours still goes beneath it: inside OpenTelemetry's span either way
    assert module.connect(3) == ("otel", ("ours", ("connected", 3)))
    otel_cb.uninstrument()
    assert module.connect(3) == ("otel", ("connected", 3))


def test_our_wrapper_goes_beneath_wrapt_wrappers_on_methods_too(fake_module: str) -> None:
    module = importlib.import_module(fake_module)
    wrapt.wrap_function_wrapper(module, "Client.send", tagging("otel"))
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "Client.send", tagging("ours"), "fake"))])
    assert module.Client().send(6) == ("otel", ("ours", ("sent", 6)))
    otel_cb.uninstrument()
    assert module.Client().send(6) == ("otel", ("sent", 6))


def test_under_a_plain_decorator_our_layer_is_switched_off(fake_module: str) -> None:
    module = importlib.import_module(fake_module)
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "connect", tagging("ours"), "fake"))])
    inner = module.connect

    @functools.wraps(inner)
    def decorated(x: Any) -> Any:
        return ("plain", inner(x))

    module.connect = decorated
    otel_cb.uninstrument()
    assert module.connect(4) == ("plain", ("connected", 4))


def test_a_bad_patch_is_logged_and_the_import_still_works(fake_module: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="otel_cb")
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "Client.nothing_here", tagging("x"), "fake"),
                                            Patch(fake_module, "connect", tagging("ours"), "fake"))])
    module = importlib.import_module(fake_module)
    assert module.connect(5) == ("ours", ("connected", 5))  # the good patch still applies
    assert "integration 'fake' cannot patch" in caplog.text and "Client.nothing_here" in caplog.text


def test_a_named_wrapper_is_imported_at_the_first_patched_call(fake_module: str, tmp_path: Path) -> None:
    # The wrapper's module stands for one that imports the client library: instrumenting must not load it.
    wrappers = f"{fake_module}_wrappers"
    (tmp_path / f"{wrappers}.py").write_text(
        "def tag(wrapped, instance, args, kwargs):\n"
        "    return ('named', wrapped(*args, **kwargs))\n")
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "connect", f"{wrappers}:tag", "fake"))])
    module = importlib.import_module(fake_module)
    assert wrappers not in sys.modules
    try:
        assert module.connect(6) == ("named", ("connected", 6))
        assert wrappers in sys.modules
        assert module.connect(7) == ("named", ("connected", 7))
    finally:
        sys.modules.pop(wrappers, None)


def test_a_named_wrapper_that_cannot_be_imported_is_logged_once_and_calls_go_through(
        fake_module: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="otel_cb")
    otel_cb.instrument({}, plugins=[Patches(Patch(fake_module, "connect", "cbfake_no_such_module:tag", "fake"))])
    module = importlib.import_module(fake_module)
    assert [module.connect(n) for n in (1, 2)] == [("connected", 1), ("connected", 2)]  # as without us
    warnings = [r for r in caplog.records if "cannot load its wrapper" in r.getMessage()]
    assert len(warnings) == 1
    assert "'cbfake_no_such_module:tag'" in warnings[0].getMessage()
    assert "connect" in warnings[0].getMessage()


@pytest.mark.parametrize("wrapper", ["no_colon", "a.b:", ":name", "a b:c", 42, None])
def test_a_patch_with_a_wrapper_that_is_neither_callable_nor_named_is_refused(wrapper: object) -> None:
    with pytest.raises(ValueError, match=r"^wrapper: .* is not allowed; use a wrapt wrapper or its "
                                         r"'package.module:function' name$"):
        Patch("m", "f", wrapper, "fake")  # type: ignore[arg-type]


def test_a_huge_wrapper_name_is_refused_with_a_short_message() -> None:
    with pytest.raises(ValueError) as refused:
        Patch("m", "f", "x" * 100_000, "fake")
    assert len(str(refused.value)) < 200 and str(refused.value).startswith("wrapper: 'xxx")


def test_non_patches_from_a_plugin_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    otel_cb.instrument({}, plugins=[Patches("not a patch")])  # type: ignore[arg-type]
    assert "not a Patch; skipped" in caplog.text
    assert _patching.applied() == []


# -- routing ----------------------------------------------------------------------


def _name(call: Call) -> str | None:
    breaker = select_breaker(call)
    return None if breaker is None else breaker.name


def test_match_rules_route_by_kind() -> None:
    otel_cb.instrument({"circuit_breakers": {
        "sentinel_client": {"match": {"http": ["http://sentinel:8080", "https://*.internal"]}},
        "shield_client": {"match": {"grpc": ["llm.shield.v1.ShieldService"]}},
        "check_only": {"match": {"grpc": ["/other.v1.Svc/Check"]}},
        "database_pool": {"match": {"db": ["postgresql://db:5432/incidents"]}},
    }})
    assert _name(Call("http", "http://sentinel:8080", "GET")) == "sentinel_client"
    assert _name(Call("http", "https://api.internal:443", "GET")) == "sentinel_client"
    assert _name(Call("grpc", "shield:50051", "/llm.shield.v1.ShieldService/Check",
                      "llm.shield.v1.ShieldService")) == "shield_client"
    assert _name(Call("grpc", "o:1", "/other.v1.Svc/Check", "other.v1.Svc")) == "check_only"
    assert _name(Call("grpc", "o:1", "/other.v1.Svc/List", "other.v1.Svc")) == "grpc://o:1"
    assert _name(Call("db", "db:5432/incidents", "fetch")) == "database_pool"
    assert _name(Call("db", "db:5432/other", "fetch")) == "db://db:5432/other"


def test_automatic_breakers_are_capped_with_one_overflow_breaker_and_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="otel_cb")
    otel_cb.instrument({"auto_breakers": {"max": 2}, "circuit_breakers": {"defaults": {"preset": "lenient"}}})
    names = [_name(Call("http", f"http://host{i}:80", "GET")) for i in range(5)]
    assert names == ["http://host0:80", "http://host1:80", OVERFLOW_BREAKER, OVERFLOW_BREAKER, OVERFLOW_BREAKER]
    assert _name(Call("http", "http://host0:80", "POST")) == "http://host0:80"  # known destination
    assert caplog.text.count("auto_breakers.max") == 1
    assert otel_cb.registry.get("http://host0:80").config == CircuitBreakerConfig.preset("lenient")  # type: ignore[union-attr]


def test_automatic_breakers_can_be_turned_off() -> None:
    otel_cb.instrument({"auto_breakers": {"enabled": False}})
    assert select_breaker(Call("http", "http://host:80", "GET")) is None


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (Call("http", "http://user:secret@api:8080/path?token=1", "GET"), "http://api:8080"),
        (Call("http", "HTTPS://API:443", "GET"), "https://api:443"),
        (Call("grpc", "dns:///shield:50051?lb=x", "/a.B/C"), "grpc://dns:///shield:50051"),
        (Call("db", "admin:pw@db:5432/incidents", "fetch"), "db://db:5432/incidents"),
    ],
)
def test_automatic_names_never_carry_credentials_paths_or_queries(call: Call, name: str) -> None:
    assert destination_name(call) == name


# -- shared state -----------------------------------------------------------------

from tests.redis_server import namespace, redis_url  # noqa: E402, F401  (fixtures)


def test_shared_state_is_attached_from_sections_and_defaults_and_detached(redis_url: str,  # noqa: F811
                                                                          namespace: str) -> None:  # noqa: F811
    shared = {"backend": "redis", "url": redis_url, "namespace": namespace}
    otel_cb.instrument({"circuit_breakers": {"defaults": {"shared_state": shared},
                                             "payments": {"match": {"http": ["http://pay:80"]}}}})
    configured = select_breaker(Call("http", "http://pay:80", "GET"))
    automatic = select_breaker(Call("http", "http://other:80", "GET"))
    assert configured is not None and automatic is not None
    assert configured._shared is not None and automatic._shared is not None
    otel_cb.uninstrument()
    assert configured._shared is None and automatic._shared is None


def test_a_failing_shared_state_leaves_the_breaker_local(caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import otel_cb.shared

    def broken(section: Any) -> Any:
        raise OSError("no redis client library")

    monkeypatch.setattr(otel_cb.shared, "from_config", broken)
    otel_cb.instrument({"circuit_breakers": {"payments": {"shared_state": {"backend": "redis", "url": "redis://127.0.0.1:9/0"}}}})
    breaker = otel_cb.registry.get("payments")
    assert breaker is not None and breaker.shared_state is None
    assert "breaker 'payments': shared_state not attached, its state stays local" in caplog.text
