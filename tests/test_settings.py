"""Config file loading and validation (otel_cb._settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otel_cb import CircuitBreakerConfig, ConfigError, _plugins, _settings
from otel_cb._settings import load, normalize_pattern

EXAMPLE = """\
circuit_breakers:
  defaults: {preset: default}
  sentinel_client: {preset: aggressive, match: {http: ["http://sentinel:8080"]}}
  shield_client:   {preset: aggressive, match: {grpc: ["llm.shield.v1.ShieldService"]}}
  database_pool:   {preset: database,   match: {db: ["postgresql://db:5432/incidents"]}}
auto_breakers: {enabled: true, max: 1000}
"""


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OTEL_CB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def test_the_issue_example_loads() -> None:
    Path("otel-cb.yaml").write_text(EXAMPLE)
    settings = load()
    assert settings.source.endswith("otel-cb.yaml")
    assert [s.name for s in settings.breakers] == ["sentinel_client", "shield_client", "database_pool"]
    sentinel, shield, database = settings.breakers
    assert sentinel.config == CircuitBreakerConfig.preset("aggressive")
    assert sentinel.match == {"http": ("http://sentinel:8080",)}
    assert shield.match == {"grpc": ("llm.shield.v1.ShieldService",)}
    assert database.match == {"db": ("db:5432/incidents",)}
    assert database.config == CircuitBreakerConfig.preset("database")
    assert (settings.auto_enabled, settings.auto_max) == (True, 1000)


def test_nothing_found_means_defaults() -> None:
    settings = load()
    assert settings.source == "defaults"
    assert settings.breakers == ()
    assert settings.defaults == CircuitBreakerConfig()
    assert (settings.auto_enabled, settings.auto_max) == (True, 1000)


def test_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    Path("pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.otel-cb.circuit_breakers.from_toml]\n'
                                      'preset = "lenient"\n')
    assert [s.name for s in load().breakers] == ["from_toml"]
    Path("otel-cb.yaml").write_text("circuit_breakers: {from_yaml: {}}\n")
    assert [s.name for s in load().breakers] == ["from_yaml"]
    other = tmp_path / "other.yaml"
    other.write_text("circuit_breakers: {from_env: {}}\n")
    monkeypatch.setenv("OTEL_CB_CONFIG", str(other))
    assert [s.name for s in load().breakers] == ["from_env"]
    assert [s.name for s in load({"circuit_breakers": {"from_mapping": {}}}).breakers] == ["from_mapping"]
    assert [s.name for s in load("otel-cb.yaml").breakers] == ["from_yaml"]


def test_pyproject_without_our_table_is_ignored() -> None:
    Path("pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load().source == "defaults"


def test_toml_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "cb.toml"
    path.write_text("[circuit_breakers.payments]\npreset = 'aggressive'\nopen_timeout = '20s'\n")
    (section,) = load(path).breakers
    assert section.config == CircuitBreakerConfig.preset("aggressive", open_timeout=20.0)


def test_sections_are_laid_over_defaults() -> None:
    settings = load({
        "circuit_breakers": {
            "defaults": {"open_timeout": "45s", "failure_statuses": [503]},
            "plain": None,
            "fast": {"preset": "aggressive", "failure_statuses": [500, 503]},
        }
    })
    plain, fast = settings.breakers
    assert settings.defaults.open_timeout == 45.0
    assert plain.config.open_timeout == 45.0
    assert fast.config == CircuitBreakerConfig.preset("aggressive", open_timeout=45.0)
    assert fast.raw["failure_statuses"] == [500, 503]
    assert plain.raw["failure_statuses"] == [503]
    assert settings.default_section["failure_statuses"] == [503]


def test_missing_explicit_file() -> None:
    with pytest.raises(ConfigError, match="is not a readable file"):
        load("nope.yaml")


def test_missing_file_named_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_CB_CONFIG", "gone.yaml")
    with pytest.raises(ConfigError) as info:
        load()
    assert info.value.problems[0].location == "OTEL_CB_CONFIG"


def _problems(text: str) -> list[str]:
    Path("bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load("bad.yaml")
    return [str(p).split("bad.yaml", 1)[1] for p in info.value.problems]


def test_every_problem_with_its_line_and_key_path_in_file_order() -> None:
    problems = _problems(
        "auto_breakers:\n"
        "  max: -1\n"
        "circuit_breakers:\n"
        "  a:\n"
        "    preset: nope\n"
        "  b:\n"
        "    window_type: weekly\n"
        "    colour: red\n"
        "extra: 1\n"
    )
    assert problems == [
        ":2: auto_breakers.max: -1 is not allowed; use a whole number >= 1, at most 1,000,000",
        ":5: circuit_breakers.a.preset: 'nope' is not a preset; use one of aggressive, cache, database, default, "
        "http_api, lenient, llm_service, notifications",
        ":7: circuit_breakers.b.window_type: 'weekly' is not allowed; use 'time' or 'count'",
        ":8: circuit_breakers.b.colour: unknown setting (value 'red'); allowed settings: " + ", ".join(
            sorted(_settings._SECTION_KEYS | set(_plugins.config_keys()))),
        ":9: extra: unknown key (value 1); allowed keys: auto_breakers, circuit_breakers, plugins",
    ]


def test_yaml_syntax_error_has_a_line() -> None:
    assert _problems("circuit_breakers:\n  a: [1, 2\n  b: {}\n")[0].startswith(":3: not valid YAML")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- 1\n", "the config must be a mapping"),
        ("circuit_breakers: [a]\n", "circuit_breakers: ['a'] is not allowed"),
        ("circuit_breakers: {a: 3}\n", "circuit_breakers.a: 3 is not allowed; use a mapping of settings"),
        ("circuit_breakers: {defaults: {match: {http: ['http://a']}}}\n", "defaults.match: not allowed in defaults"),
        ("circuit_breakers: {a: {match: {ftp: ['x']}}}\n", "circuit_breakers.a.match.ftp: unknown call kind"),
        ("circuit_breakers: {a: {match: {http: [1]}}}\n", "match.http: [1] is not allowed; use a list of strings"),
        ("circuit_breakers: {a: {match: {http: ['http://u:p@h:1']}}}\n", "without credentials, path or query"),
        ("circuit_breakers: {a: {match: {db: ['db:5432']}}}\n", "use 'postgresql://host[:port]/dbname'"),
        ("auto_breakers: {enabled: maybe}\n", "auto_breakers.enabled: 'maybe' is not allowed; use true or false"),
        ("auto_breakers: {limit: 3}\n", "auto_breakers.limit: unknown key"),
        ("plugins: 3\n", "plugins: 3 is not allowed"),
    ],
)
def test_shape_errors_name_field_value_and_what_is_allowed(text: str, expected: str) -> None:
    assert expected in "\n".join(_problems(text))


def test_mapping_problems_have_key_paths_without_lines() -> None:
    with pytest.raises(ConfigError) as info:
        load({"circuit_breakers": {"a": {"failure_threshold": 0}}})
    assert str(info.value.problems[0]) == (
        "<mapping>: circuit_breakers.a.failure_threshold: 0 is not allowed; use a whole number >= 1 or None, at "
        "most 1,000,000"
    )
    assert str(info.value).startswith("invalid config: <mapping>: circuit_breakers.a.failure_threshold")


def test_integration_keys_are_checked_by_the_integrations(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def validate_settings(name: str, section: Any) -> None:
        seen.append((name, dict(section)))
        if section.get("failure_statuses") == ["teapot"]:
            raise ValueError("failure_statuses: 'teapot' is not a status; use integers 100-599")

    monkeypatch.setattr(_plugins, "config_keys", lambda: {"failure_statuses": [("test", validate_settings)]})
    load({"circuit_breakers": {"a": {"preset": "aggressive", "failure_statuses": [503]}, "b": {}}})
    assert seen == [("a", {"failure_statuses": [503]})]  # only its own keys, only where present
    with pytest.raises(ConfigError) as info:
        load({"circuit_breakers": {"a": {"failure_statuses": ["teapot"]}}})
    assert str(info.value.problems[0]) == (
        "<mapping>: circuit_breakers.a.failure_statuses: 'teapot' is not a status; use integers 100-599"
    )


@pytest.mark.parametrize(
    ("kind", "pattern", "normal"),
    [
        ("http", "http://Sentinel:8080", "http://sentinel:8080"),
        ("http", "https://api.example.com", "https://api.example.com:443"),
        ("http", "http://*.internal", "http://*.internal:80"),
        ("http", "http://[::1]:8080/", "http://[::1]:8080"),
        ("db", "postgresql://user:secret@db/incidents", "db:5432/incidents"),
        ("db", "postgres://db:6543/x?sslmode=require", "db:6543/x"),
        ("db", "db:5432/incidents", "db:5432/incidents"),
        ("grpc", "llm.shield.v1.ShieldService", "llm.shield.v1.ShieldService"),
        ("grpc", "/llm.shield.v1.ShieldService/Check", "/llm.shield.v1.ShieldService/Check"),
        ("grpc", "shield:50051", "shield:50051"),
    ],
)
def test_patterns_are_normalised_to_call_targets(kind: str, pattern: str, normal: str) -> None:
    assert normalize_pattern(kind, pattern) == normal


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [("http", "sentinel:8080"), ("http", "http://h/path"), ("http", "http://h?q=1"), ("http", "ftp://h"),
     ("grpc", "dns://x"), ("grpc", "a b"), ("db", "postgresql://h"), ("smtp", "x")],
)
def test_bad_patterns(kind: str, pattern: str) -> None:
    with pytest.raises(ValueError, match="is not"):
        normalize_pattern(kind, pattern)


def test_the_shipped_validators_run_at_load() -> None:
    # otel_cb.shared checks shared_state; its dotted field names become key paths
    with pytest.raises(ConfigError) as info:
        load({"circuit_breakers": {"a": {"shared_state": {"backend": "memcached", "url": "redis://r:6379/0"}}}})
    assert str(info.value.problems[0]).startswith("<mapping>: circuit_breakers.a.shared_state.backend: 'memcached'")
