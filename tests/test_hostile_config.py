"""Hostile or mistaken configuration (issue 13): one clear error, through every door, never a traceback or hang.

Each case goes through ``otel-cb config check`` and ``otel_cb.instrument(...)``
in process, and a sample through the real console scripts.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import otel_cb
from otel_cb import _cli, _redact, _settings
from otel_cb._config import CircuitBreakerConfig
from otel_cb._problems import Problems, did_you_mean
from tests.apps.harness import base_env, run

pytestmark = pytest.mark.timeout(60)

HUGE = "1" + "0" * 400
NUMERIC_FIELDS = ["failure_threshold", "failure_rate_threshold", "slow_call_duration", "slow_call_rate_threshold",
                  "minimum_calls", "window_size", "open_timeout", "backoff_multiplier", "max_open_timeout", "jitter",
                  "half_open_max_calls", "success_threshold", "call_timeout"]


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    otel_cb.uninstrument()


def check(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``otel-cb config check`` on ``text``; assert exit 2; return what it printed."""
    path = tmp_path / "otel-cb.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    assert _cli.main(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert len(err) < 20_000, "the error must be short, never the whole value"
    return out + err


def instrument_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "instrument.yaml"
    path.write_text(text)
    with pytest.raises(otel_cb.ConfigError) as info:
        otel_cb.instrument(str(path))
    return str(info.value)


# -- numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1" + "0" * 5000, "1e400", ".inf", ".nan"])
def test_a_number_out_of_any_range_is_one_error_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: str) -> None:
    text = f"circuit_breakers:\n  b:\n    {field}: {value}\n"
    out = check(tmp_path, text, capsys)
    assert field in out or "not valid YAML" in out
    assert "0" * 100 not in out
    instrument_error(tmp_path, text)


@pytest.mark.parametrize("section", [
    "fallback: {type: stale_cache, ttl: %s}",
    "shared_state: {backend: redis, url: 'redis://127.0.0.1:6379/0', namespace: n, timeout: %s}",
])
def test_huge_integration_durations_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               section: str) -> None:
    text = f"circuit_breakers:\n  b:\n    match: {{http: ['http://h:1']}}\n    {section % HUGE}\n"
    out = check(tmp_path, text, capsys)
    assert "ttl" in out or "timeout" in out
    assert "digits" in out and "0" * 100 not in out


@pytest.mark.parametrize(("window_type", "size"), [("count", 10**12), ("count", 10**8), ("count", 100_001),
                                                    ("time", 10**9), ("time", 86_401)])
def test_window_size_has_an_upper_bound(window_type: str, size: int) -> None:
    with pytest.raises(ValueError, match=r"window_size: .* at most"):
        CircuitBreakerConfig(window_type=window_type, window_size=size)  # type: ignore[arg-type]


def test_the_largest_windows_allowed_work() -> None:
    breaker = otel_cb.CircuitBreaker("w", CircuitBreakerConfig(window_type="count", window_size=100_000))
    assert breaker.call(lambda: 1) == 1
    CircuitBreakerConfig(window_type="time", window_size=86_400)


def test_every_numeric_field_refuses_values_that_would_overflow_at_run_time() -> None:
    for field in NUMERIC_FIELDS:
        for value in (10**400, -(10**400), float("inf"), float("nan")):
            with pytest.raises(ValueError, match=f"^{field}: "):
                CircuitBreakerConfig(**{field: value})


def test_config_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        CircuitBreakerConfig(3)  # type: ignore[misc]
    config = CircuitBreakerConfig.from_dict({"preset": "aggressive", "open_timeout": "5s"})
    assert config.replace(jitter=0.5).jitter == 0.5
    assert CircuitBreakerConfig.preset("cache", jitter=0.1).jitter == 0.1


# -- exception names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..Foo", ".Foo", "Foo.", "a..b", "a b", "1abc", "", "x" * 500])
def test_a_malformed_exception_name_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                name: str) -> None:
    text = f"circuit_breakers:\n  b:\n    record_exceptions: [{name!r}]\n"
    assert "record_exceptions" in check(tmp_path, text, capsys)
    assert "record_exceptions" in instrument_error(tmp_path, text)


def test_checking_imports_no_module_the_config_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "side_effect_mod.py"
    module.write_text("print('SIDE EFFECT')\nclass Busy(Exception):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        out = check(tmp_path, "circuit_breakers:\n  b:\n    record_exceptions: [this.Nope, side_effect_mod.Nope]\n",
                    capsys)
        assert "this.Nope" in out and "side_effect_mod.Nope" in out and "has no attribute" in out
        assert "Beautiful is better" not in out and "SIDE EFFECT" not in out
        assert "this" not in sys.modules and "side_effect_mod" not in sys.modules
        good = tmp_path / "good.yaml"
        good.write_text("circuit_breakers:\n  b:\n    record_exceptions: [side_effect_mod.Busy, TimeoutError]\n")
        assert _cli.main(["config", "check", str(good)]) == 0
        assert "SIDE EFFECT" not in capsys.readouterr().out
        assert "side_effect_mod" not in sys.modules
        # At run time the application's own module is imported, and the class is the real one.
        settings = _settings.load(str(good))
        assert settings.breakers[0].config.record_exceptions[0].__name__ == "Busy"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("side_effect_mod", None)


def test_a_module_that_raises_on_import_is_a_config_error(tmp_path: Path) -> None:
    # Its source defines E, so only importing it can tell: instrument() does, and says what went wrong.
    (tmp_path / "raising_mod.py").write_text("class E(Exception):\n    pass\n\nraise RuntimeError('boom')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        message = instrument_error(tmp_path, "circuit_breakers:\n  b:\n    record_exceptions: [raising_mod.E]\n")
        assert "record_exceptions" in message and "RuntimeError" in message
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("raising_mod", None)


def test_instrument_does_not_import_a_module_lacking_the_name(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    message = instrument_error(tmp_path, "circuit_breakers:\n  b:\n    record_exceptions: [this.Nope]\n")
    assert "this.Nope" in message and "has no attribute Nope" in message
    assert "this" not in sys.modules and "Beautiful" not in capsys.readouterr().out


# -- YAML and data shape ---------------------------------------------------------------------


def _laughs(key: str) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    anchors = "\n".join("  " + line for line in lines)
    return f"{key}:\n{anchors}\n"


@pytest.mark.parametrize("text", [
    _laughs("plugins"),
    "circuit_breakers:\n  b:\n    record_exceptions: &x [a, b]\n" + _laughs("plugins"),
    "plugins: &p {x: *p}\n",
    "plugins: &p [*p]\n",
    "circuit_breakers: &c {b: *c}\n",
    "plugins: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "plugins: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
    "plugins:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)),
    "a: b\n---\nc: d\n",
    "plugins: *nothing\n",
    "circuit_breakers: {b: {failure_threshold: " + "9" * 5000 + "}}\n",
])
def test_yaml_bombs_and_deep_nesting_are_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  text: str) -> None:
    out = check(tmp_path, text, capsys)
    assert re.search(r"limit|recursive|not valid YAML|more than|contains itself", out), out
    instrument_error(tmp_path, text)


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "plugins:\n  x: '" + "a" * (_settings.MAX_FILE_BYTES + 10) + "'\n"
    assert "limit" in check(tmp_path, text, capsys)


def test_a_recursive_mapping_passed_in_is_an_error() -> None:
    data: dict[str, Any] = {}
    data["plugins"] = {"x": data}
    with pytest.raises(otel_cb.ConfigError, match="contains itself"):
        otel_cb.instrument(data)


def test_the_c_loader_is_used_when_present() -> None:
    yaml = pytest.importorskip("yaml")
    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    calls: list[str] = []
    original = yaml.CSafeLoader.__init__

    def spy(self: Any, stream: Any) -> None:
        calls.append("c")
        original(self, stream)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(yaml.CSafeLoader, "__init__", spy)
        patch.setattr(yaml, "safe_load", lambda *a, **k: pytest.fail("parsed a second time"))
        _settings._read_yaml("x", "circuit_breakers: {b: {open_timeout: 5}}\n")
    assert calls == ["c"]


def test_lines_and_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("circuit_breakers:\n  defaults: &d {open_timeout: 5}\n  b: {<<: *d, jitter: 0.1}\n")
    settings = _settings.load(str(path))
    assert settings.breakers[0].config.open_timeout == 5 and settings.breakers[0].config.jitter == 0.1


# -- every problem, with suggestions ---------------------------------------------------------


def test_every_error_of_a_section_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check(tmp_path, "circuit_breakers:\n  b: {failure_threshold: three, half_open_max_calls: 2.5, "
                          "jitter: 7, window_type: weekly, bogus_key: 1}\n", capsys)
    for field in ("failure_threshold", "half_open_max_calls", "jitter", "window_type", "bogus_key"):
        assert f"circuit_breakers.b.{field}:" in out, out
    assert "5 error(s)" in out


def test_a_misspelled_key_gets_a_suggestion_not_the_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check(tmp_path, "circuit_breakers:\n  b: {failure_treshold: 3}\nauto_breaker: {}\n"
                          "plugins: {}\n", capsys)
    assert "did you mean failure_threshold?" in out
    assert "did you mean auto_breakers?" in out
    assert "success_threshold" not in out  # not the list of every setting


def test_one_validator_can_report_several_problems() -> None:
    collector = _settings._Collector("src", {})
    collector.add_error(("circuit_breakers", "b"), Problems([ValueError("fallback.ttl: bad"),
                                                             ValueError("fallback.status: worse")]),
                        frozenset({"fallback"}))
    assert [str(p) for p in collector.problems] == ["src: circuit_breakers.b.fallback.ttl: bad",
                                                    "src: circuit_breakers.b.fallback.status: worse"]
    assert did_you_mean("htpx", ["httpx", "grpc"]) == "httpx"
    assert did_you_mean("zzz", ["httpx", "grpc"]) is None


@pytest.mark.parametrize("config", [[], (), 5, b"x.yaml", object(), 1.5])
def test_instrument_with_a_wrong_kind_of_config_is_a_config_error(config: Any) -> None:
    with pytest.raises(otel_cb.ConfigError, match="config: "):
        otel_cb.instrument(config)


@pytest.mark.parametrize(("kwargs", "name"), [({"disabled": 5}, "disabled"), ({"disabled": [1]}, "disabled"),
                                              ({"plugins": 3}, "plugins")])
def test_instrument_with_wrong_arguments_is_a_config_error(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(otel_cb.ConfigError, match=name):
        otel_cb.instrument({}, **kwargs)


# -- secrets ---------------------------------------------------------------------------------


SECRET_CASES = [
    "circuit_breakers:\n  b: {shared_state: 'redis://user:hunter2@h:6379/0'}\n",
    "circuit_breakers:\n  b: {shared_state: {backend: redis, url: 'ftp://h/0?password=hunter2', namespace: n}}\n",
    "circuit_breakers:\n  b: {shared_state: {backend: redis, url: 'redis://u:hunter2@[::1', namespace: n}}\n",
    "circuit_breakers:\n  b: {shared_state: {backend: redis, url: 'http://h/0?token=hunter2&db=1', nmespace: n}}\n",
    "sharedstate: {url: 'redis://user:hunter2@h:6379/0'}\n",
    "circuit_breakers:\n  b: {sharedstate: {url: 'redis://user:hunter2@h:6379/0'}}\n",
    "circuit_breakers:\n  b: {match: {http: ['http://user:hunter2@host:80']}}\n",
    "circuit_breakers:\n  b: {match: {db: ['postgresql://u:hunter2@db']}}\n",
    "circuit_breakers:\n  b: {match: {htp: ['http://user:hunter2@host:80']}}\n",
    "circuit_breakers:\n  b: {open_timeout: 'postgresql://u:hunter2@db/x'}\n",
    "circuit_breakers:\n  'http://u:hunter2@h': [1]\n",
    "auto_breakers: {max: 'redis://:hunter2@h', x: 'password=hunter2'}\n",
    "plugins: 'https://api.example/?api_key=hunter2'\n",
    "circuit_breakers:\n  b: {shared_state: {backend: redis, url: 'redis://h:1/0', password: hunter2}}\n",
    "circuit_breakers:\n  b: {pasword: hunter2}\n",
    "extra: {password: hunter2, user: u}\n",
    "circuit_breakers:\n  b: {shared_state: {backend: redis, url: 'redis://u:hunter2/x@host:1/0', namespace: n,"
    " timeout: 0}, open_timeout: 'redis://u:hunter2" + "x" * 300 + "@h'}\n",
]


@pytest.mark.parametrize("text", SECRET_CASES)
def test_no_error_shows_a_password(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    out = check(tmp_path, text, capsys)
    assert "hunter2" not in out and "***" in out, out
    assert "hunter2" not in instrument_error(tmp_path, text)


def test_a_malformed_url_names_the_field_and_a_masked_value(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = check(tmp_path, "circuit_breakers:\n  b:\n    shared_state: {backend: redis, url: 'redis://u:pw@[::1', "
                          "namespace: n}\n", capsys)
    assert "shared_state.url: 'redis://***@[::1'" in out
    assert ":pw@" not in out and "Invalid IPv6" not in out


@pytest.mark.parametrize(("text", "masked"), [
    ("redis://user:hunter2@h:6379/0", "redis://***@h:6379/0"),
    ("ftp://h/0?password=hunter2", "ftp://h/0?password=***"),
    ("redis://u:hunter2@[::1", "redis://***@[::1"),
    ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"),
    ("https://h/?X-Api-Key=hunter2&page=2", "https://h/?X-Api-Key=***&page=2"),
    ("a@b.example and monkey=1", "a@b.example and monkey=1"),
    ("redis://u:pa/ss@h:1/0", "redis://***@h:1/0"),
    ("--admin-address 'user:hunter2@[::1'", "--admin-address '***@[::1'"),
    ("{'password': 'hunter2', \"api_key\": 5}", "{'password': '***', \"api_key\": '***'}"),
])
def test_mask(text: str, masked: str) -> None:
    assert _redact.mask(text) == masked


def test_shown_values_are_masked_before_they_are_shortened() -> None:
    assert "hunter2" not in _redact.shown("redis://u:hunter2" + "x" * 500 + "@host")
    assert _redact.shown({"password": "hunter2", "n": 1}) == "{'n': 1, 'password': '***'}"
    assert "hunter2" not in _redact.shown(types.MappingProxyType({"token": "hunter2"}))
    assert len(_redact.shown(list(range(10**5)))) <= 80 and "digits" in _redact.shown(10**5000)


def test_log_lines_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="otel_cb"):
        logging.getLogger("otel_cb").warning("cannot reach %s", "redis://u:hunter2@h:6379")
        logging.getLogger("otel_cb.shared").warning("cannot reach redis://u:hunter2@h:6379")
    assert "hunter2" not in caplog.text and caplog.text.count("redis://***@h:6379") == 2


def test_every_logger_otel_cb_uses_is_masked() -> None:
    root = Path(otel_cb.__file__).parent
    names = set()
    for source in root.rglob("*.py"):
        names.update(re.findall(r"getLogger\(\"(otel_cb[^\"]*)\"\)", source.read_text()))
    assert names and names <= set(_redact.LOGGERS)


# -- the console scripts ---------------------------------------------------------------------


def _script(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = run(*args, env=env or base_env(), cwd=cwd or Path.cwd(), timeout=30)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.mark.parametrize("text", ["circuit_breakers: {b: {open_timeout: " + HUGE + "}}\n", _laughs("plugins"),
                                  "plugins: " + "[" * 20_000 + "]" * 20_000 + "\n",
                                  SECRET_CASES[0], "circuit_breakers: {b: {record_exceptions: [this.Nope]}}\n"])
def test_otel_cb_instrument_refuses_before_the_app_starts(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = _script("otel-cb-instrument", "--config", str(path), "python", "-c", "print('APP STARTED')")
    assert result.returncode == 2
    assert "APP STARTED" not in result.stdout and "Beautiful" not in result.stdout + result.stderr
    assert "hunter2" not in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["--traces-exporter", "jaeger"], {}, "--traces-exporter: 'jaeger' is not supported; use one or more of otlp"),
    (["--metrics-exporter", "otlp,bogus"], {}, "--metrics-exporter: 'bogus'"),
    ([], {"OTEL_METRICS_EXPORTER": "bogus"}, "OTEL_METRICS_EXPORTER: 'bogus'"),
    ([], {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin'"),
    ([], {"OTEL_LOGS_EXPORTER": "bogus"}, "OTEL_LOGS_EXPORTER: 'bogus'"),
    ([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "bogus"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'bogus'"),
    (["--traces-exporter", "otlp"], {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json'"),
    (["--disable", "htpx"], {}, "--disable: 'htpx' is not an integration or plugin; did you mean httpx?"),
    (["--config", "missing.yaml"], {}, "--config: "),
])
def test_usage_errors_are_one_line_and_exit_2_before_the_app(tmp_path: Path, args: list[str], env: dict[str, str],
                                                             expected: str) -> None:
    result = _script("otel-cb-instrument", *args, "python", "-c", "print('APP STARTED')",
                     env={**base_env(), **env}, cwd=tmp_path)
    assert result.returncode == 2
    assert "APP STARTED" not in result.stdout
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, result.stderr
    if "--disable" in args:
        assert "httpx" in result.stderr and "grpc" in result.stderr  # the known names
    if "--config" in args:
        assert "OTEL_CB_CONFIG" not in result.stderr and "missing.yaml" in result.stderr


def test_no_command_is_a_clear_usage_line() -> None:
    result = _script("otel-cb-instrument")
    assert result.returncode == 2
    assert "required" not in result.stderr and "args" not in result.stderr
    assert "usage: otel-cb-instrument [options] COMMAND [ARGS...]" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_an_interpreter_without_otel_cb_is_named_once(tmp_path: Path) -> None:
    python = Path(sys.base_prefix) / "bin" / "python3"
    env = base_env()
    probe = subprocess.run([str(python), "-c", "import otel_cb"], env=env, cwd=tmp_path, capture_output=True,
                           timeout=30)
    if probe.returncode == 0 or not python.exists():
        pytest.skip("no interpreter without otel-cb at hand")
    child = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'print(1)']); print('APP RAN')"
    result = _script("otel-cb-instrument", str(python), "-c", child, env=env, cwd=tmp_path)
    assert result.returncode == 0 and "APP RAN" in result.stdout
    assert result.stderr.count("otel-cb is not installed for this Python") == 1, result.stderr
    assert "nothing is protected" in result.stderr


def test_otel_cb_plugins_refuses_an_unknown_disable_name() -> None:
    result = _script("otel-cb", "plugins", "--disable", "grcp")
    assert result.returncode == 2 and "did you mean grpc?" in result.stderr


def test_a_usage_error_changes_no_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    before = dict(os.environ)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    assert _cli.instrument_main(["--traces-exporter", "jaeger", "--config", "x.yaml", "python"]) == 2
    assert os.environ == before


def test_an_integration_section_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check(tmp_path, "circuit_breakers:\n  b:\n    shared_state: {backend: memcached, url: 'ftp://h', "
                          "namespace: 'a b', timeout: -1, colour: red}\n", capsys)
    for field in ("backend", "url", "namespace", "timeout", "colour"):
        assert f"shared_state.{field}:" in out, out


@pytest.mark.parametrize("preset", [["x"], {"a": 1}, 10**400, None])
def test_a_preset_of_the_wrong_kind_is_a_value_error(preset: object) -> None:
    with pytest.raises(ValueError, match=r"^preset: "):
        CircuitBreakerConfig.preset(preset)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^preset: "):
        CircuitBreakerConfig.from_dict({"preset": preset})


def test_check_finds_the_applications_modules_in_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "app_errors_mod.py").write_text("class Busy(Exception):\n    pass\n")
    (tmp_path / "otel-cb.yaml").write_text("circuit_breakers:\n  b: {record_exceptions: [app_errors_mod.Busy]}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("circuit_breakers:\n  b: {record_exceptions: [app_errors_mod.Nope]}\n")
    ok = _script("otel-cb", "config", "check", "otel-cb.yaml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    refused = _script("otel-cb", "config", "check", "bad.yaml", cwd=tmp_path)
    assert refused.returncode == 2 and "has no attribute Nope" in refused.stderr
    started = _script("otel-cb-instrument", "python", "-c", "print('APP STARTED')", cwd=tmp_path)
    assert started.returncode == 0 and "APP STARTED" in started.stdout, started.stderr


def test_a_name_bound_to_a_literal_is_refused_without_importing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(otel_cb.ConfigError, match=r"'this\.s' is not an exception class"):
        otel_cb.instrument({"circuit_breakers": {"b": {"record_exceptions": ["this.s"]}}})
    assert "this" not in sys.modules and "Beautiful" not in capsys.readouterr().out
