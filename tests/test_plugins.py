"""The plugin API (otel_cb.plugin, otel_cb.hookspecs) and the manager (otel_cb._plugins)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from collections.abc import Iterator
from typing import Any

import pytest

import otel_cb
import otel_cb.integrations.httpx
from otel_cb import _plugins, hookspecs
from otel_cb.plugin import Call, Patch, breaker_settings, classify, fallback, hookimpl, select_breaker

HTTP = Call("http", "http://api:80", method="GET", url="http://api/path?q=1")


@pytest.fixture
def no_entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """instrument() sees only the plugins a test passes, never the venv's."""
    monkeypatch.setattr(_plugins, "_entry_points", lambda: [])
    yield
    otel_cb.uninstrument()


def test_helpers_answer_nothing_while_not_instrumented() -> None:
    otel_cb.uninstrument()
    assert select_breaker(HTTP) is None
    assert classify(HTTP, None, RuntimeError()) is None
    assert fallback(HTTP, RuntimeError()) is None
    assert breaker_settings("anything") == {}


def test_contract_shapes() -> None:
    assert otel_cb.hookimpl is hookimpl
    assert [f.name for f in dataclasses.fields(Call)] == ["kind", "target", "method", "service", "url", "request"]
    assert [f.name for f in dataclasses.fields(Patch)] == ["module", "target", "wrapper", "integration"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        HTTP.target = "x"  # type: ignore[misc]


def test_every_hookspec_is_documented_and_firstresult_where_promised() -> None:
    specs = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("otel_cb_")}
    assert set(specs) == {
        "otel_cb_breaker_defaults", "otel_cb_config_keys", "otel_cb_configure", "otel_cb_register_breakers",
        "otel_cb_patches",
        "otel_cb_select_breaker",
        "otel_cb_classify", "otel_cb_fallback", "otel_cb_state_change",
    }
    assert set(hookspecs.__all__) == set(specs)
    for name, fn in specs.items():
        assert inspect.getdoc(fn), name
        firstresult = fn.otel_cb_spec["firstresult"]
        assert firstresult == (name in ("otel_cb_select_breaker", "otel_cb_classify", "otel_cb_fallback")), name


class Counting:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls: list[Call] = []

    @hookimpl
    def otel_cb_select_breaker(self, call: Call) -> str | None:
        self.calls.append(call)
        return self.answer


def test_routing_is_memoised_per_call_shape_and_forgotten_on_reinstrument(no_entry_points: None) -> None:
    plugin = Counting("payments")
    otel_cb.instrument({}, plugins=[plugin])
    first = select_breaker(HTTP)
    assert first is not None and first.name == "payments"
    assert select_breaker(dataclasses.replace(HTTP, url="http://api/other", request=object())) is first
    assert len(plugin.calls) == 1  # url and request are not part of the key
    select_breaker(dataclasses.replace(HTTP, method="POST"))
    assert len(plugin.calls) == 2
    otel_cb.uninstrument()
    assert select_breaker(HTTP) is None
    assert "payments" not in otel_cb.registry  # made by instrument(), removed by uninstrument()
    otel_cb.instrument({}, plugins=[plugin])
    assert select_breaker(HTTP) is not None
    assert len(plugin.calls) == 3


def test_a_plugin_answering_first_overrides_the_router_and_none_falls_through(no_entry_points: None) -> None:
    otel_cb.instrument({"circuit_breakers": {"configured": {"match": {"http": ["http://api"]}}}},
                       plugins=[Counting(None)])
    breaker = select_breaker(HTTP)
    assert breaker is not None and breaker.name == "configured"
    otel_cb.instrument({"circuit_breakers": {"configured": {"match": {"http": ["http://api"]}}}},
                       plugins=[Counting("mine")])
    breaker = select_breaker(HTTP)
    assert breaker is not None and breaker.name == "mine"


class Raising:
    @hookimpl(tryfirst=True)
    def otel_cb_select_breaker(self, call: Call) -> str | None:
        raise RuntimeError("boom")

    @hookimpl
    def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
        raise RuntimeError("boom")


def test_a_raising_hook_is_logged_once_and_treated_as_none(no_entry_points: None,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="otel_cb")
    otel_cb.instrument({}, plugins=[Counting("fine"), Raising()])
    for method in ("GET", "PUT", "DELETE"):
        breaker = select_breaker(dataclasses.replace(HTTP, method=method))
        assert breaker is not None and breaker.name == "fine"
        assert classify(HTTP, None, None) is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("plugin 'Raising' raised in otel_cb_select_breaker, ignored: RuntimeError: boom" in m
               for m in messages) == 1
    assert sum("raised in otel_cb_classify" in m for m in messages) == 1
    assert not any(r.exc_info for r in caplog.records)  # one line, no traceback at WARNING


class Policy:
    @hookimpl
    def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
        if result == 503:
            return "failure"
        if result == "weird":
            return "maybe"
        return None

    @hookimpl
    def otel_cb_fallback(self, call: Call, error: BaseException) -> object | None:
        return f"cached for {call.target}" if isinstance(error, ConnectionError) else None


def test_classify_and_fallback(no_entry_points: None, caplog: pytest.LogCaptureFixture) -> None:
    otel_cb.instrument({}, plugins=[Policy()])
    assert classify(HTTP, 503, None) == "failure"
    assert classify(HTTP, 200, None) is None
    assert classify(HTTP, "weird", None) is None  # not a verdict: ignored and logged
    assert "otel_cb_classify returned 'maybe'" in caplog.text
    assert fallback(HTTP, ConnectionError()) == "cached for http://api:80"
    assert fallback(HTTP, ValueError()) is None


def test_state_change_hook_sees_every_transition_while_instrumented(no_entry_points: None) -> None:
    events: list[tuple[str, str]] = []

    class Watcher:
        @hookimpl
        def otel_cb_state_change(self, breaker: Any, event: Any) -> None:
            events.append((breaker.name, str(event.state)))

    otel_cb.instrument({}, plugins=[Watcher()])
    breaker = otel_cb.registry.get_or_create("watched")
    breaker.force_open()
    otel_cb.uninstrument()
    breaker.reset()
    assert events == [("watched", "forced_open")]
    otel_cb.registry.remove("watched")


def test_configure_and_register_breakers_hooks(no_entry_points: None) -> None:
    seen: dict[str, Any] = {}

    class Setup:
        @hookimpl
        def otel_cb_configure(self, config: Any) -> None:
            seen["config"] = config

        @hookimpl
        def otel_cb_register_breakers(self, registry: Any, config: Any) -> None:
            seen["configured_first"] = "configured" in registry
            registry.get_or_create("from_plugin")

    config = {"circuit_breakers": {"configured": {}}, "plugins": {"setup": {"level": 3}}}
    otel_cb.instrument(config, plugins=[Setup()])
    assert seen["config"]["plugins"] == {"setup": {"level": 3}}
    assert seen["configured_first"] is True
    assert "from_plugin" in otel_cb.registry
    otel_cb.registry.remove("from_plugin")


def test_breaker_settings_are_the_section_laid_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the httpx plugin, which declares failure_statuses.
    found = [ep for ep in _plugins._entry_points() if ep.name == "httpx"]
    monkeypatch.setattr(_plugins, "_entry_points", lambda: found)
    monkeypatch.setattr(otel_cb.integrations.httpx, "otel_cb_patches", lambda: [])
    otel_cb.instrument({"circuit_breakers": {
        "defaults": {"failure_statuses": [503]},
        "api": {"preset": "aggressive", "shared_state": None, "match": {"http": ["http://api"]}},
    }})
    try:
        assert breaker_settings("api") == {"failure_statuses": [503], "preset": "aggressive", "shared_state": None}
        assert breaker_settings("http://elsewhere:80") == {"failure_statuses": [503]}
    finally:
        otel_cb.uninstrument()


class FakeEntryPoint:
    def __init__(self, name: str, target: Any, dist: str = "acme-plugin", version: str = "2.0") -> None:
        self.name = name
        self.value = f"acme.{name}"
        self._target = target
        self.dist = types.SimpleNamespace(metadata={"Name": dist}, version=version)

    def load(self) -> Any:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    vars(module).update(attrs)
    return module


def test_discovery_reports_loaded_disabled_and_failed(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    @hookimpl
    def otel_cb_select_breaker(call: Call, surprise: int) -> None:  # not in the spec
        return None

    good = _module("good", otel_cb_select_breaker=Counting("x").otel_cb_select_breaker)
    entry_points = [
        FakeEntryPoint("good", good),
        FakeEntryPoint("off", _module("off")),
        FakeEntryPoint("missing", ModuleNotFoundError("No module named 'acme_dep'")),
        FakeEntryPoint("invalid", _module("invalid", otel_cb_select_breaker=otel_cb_select_breaker)),
    ]
    monkeypatch.setattr(_plugins, "_entry_points", lambda: entry_points)
    manager = _plugins.new_manager()
    infos = {i.name: i for i in _plugins.discover(manager, disabled={"off"})}
    assert infos["good"].status == "loaded" and manager.is_registered(good)
    assert (infos["good"].distribution, infos["good"].version) == ("acme-plugin", "2.0")
    assert infos["off"].status == "disabled"
    assert infos["missing"].status == "failed: ModuleNotFoundError: No module named 'acme_dep'"
    assert infos["invalid"].status.startswith("failed: PluginValidationError")
    assert "plugin 'missing' (acme.missing) failed to import, skipped" in caplog.text
    table = _plugins.format_plugins(infos.values()).splitlines()
    assert table[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    assert table[1].split() == ["good", "acme-plugin", "2.0", "loaded"]
    assert _plugins.format_plugins([]) == "no plugins found in entry-point group 'otel_cb'"


def test_start_up_reads_the_entry_points_and_their_metadata_once(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Any) -> None:
    # Reading them costs milliseconds each time; instrument() asks for them several times
    # (config keys, each validation, the plugins), and otel-cb-instrument pays it at every start.
    import importlib.metadata

    scans: list[str] = []
    reads: list[str] = []
    real_scan = importlib.metadata.entry_points
    real_metadata = importlib.metadata.Distribution.metadata

    def scan(**kwargs: Any) -> Any:
        scans.append(kwargs.get("group", ""))
        return real_scan(**kwargs)

    def metadata(self: importlib.metadata.Distribution) -> Any:
        reads.append(str(getattr(self, "_path", "")))
        return real_metadata.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(importlib.metadata, "entry_points", scan)
    monkeypatch.setattr(importlib.metadata.Distribution, "metadata", property(metadata))
    monkeypatch.setattr(_plugins, "_found", None, raising=False)
    try:
        otel_cb.instrument({"circuit_breakers": {"defaults": {"failure_threshold": 3}}})
        otel_cb.instrument({"circuit_breakers": {"defaults": {"failure_threshold": 4}}})
    finally:
        otel_cb.uninstrument()
    found = _plugins._entry_points()
    assert scans == ["otel_cb"]
    assert len(reads) == len({ep.dist._path for ep in found}) > 0  # one read per distribution
    monkeypatch.syspath_prepend(str(tmp_path))  # a new sys.path may hold new plugins: scanned again
    assert _plugins._entry_points() == found and scans == ["otel_cb", "otel_cb"]
