"""The observability stack in grafana/: generated dashboards, alert rules and their tests, stack files.

The end-to-end proof that every dashboard query works against a real
Prometheus fed by otel-cb is in ``test_grafana_e2e.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROMETHEUS = GRAFANA / "prometheus"

# What the issue asks of each per-breaker dashboard, with the thresholds of the service plugins.
PER_BREAKER = {
    "otel-cb-sentinel.json": ("sentinel_client", 0.3),
    "otel-cb-shield.json": ("shield_client", 0.3),
    "otel-cb-edge-agent.json": ("edge_agent_client", 0.2),
    "otel-cb-database.json": ("database_pool", 0.5),
}
ALERTS = {
    "CircuitBreakerOpen",
    "CircuitBreakerStuckOpen",
    "CircuitBreakersMultipleOpen",
    "CircuitBreakerHighFailureRate",
    "CircuitBreakerFlapping",
    "CircuitBreakerHighRejectionRate",
}


def tool(name: str) -> str:
    """Path of a Prometheus binary; skip (or fail, with OTEL_CB_REQUIRE_SERVICES=1) when missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("OTEL_CB_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def generator() -> ModuleType:
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk needs Python 3.11+")
    spec = importlib.util.spec_from_file_location("generate_dashboards", GRAFANA / "generate_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def load(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return result


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def exprs(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]


def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


# -- dashboards as code ----------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_produces() -> None:
    rendered = generator().render()
    assert set(rendered) == {"otel-cb-overview.json", *PER_BREAKER}
    assert {path.name for path in DASHBOARDS.glob("*.json")} == set(rendered)
    for name, content in rendered.items():
        assert (DASHBOARDS / name).read_text() == content, (
            f"{name} differs from the generator; run .venv/bin/python grafana/generate_dashboards.py"
        )


def test_check_mode_reports_a_stale_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = generator()
    monkeypatch.setattr(module, "DASHBOARD_DIR", tmp_path)
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    (tmp_path / "otel-cb-shield.json").write_text("{}\n")
    assert module.main(["--check"]) == 1


@pytest.mark.parametrize("name", ["otel-cb-overview.json", *PER_BREAKER])
def test_dashboard_has_the_variables_annotations_and_jaeger_link(name: str) -> None:
    board = load(name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "service", "breaker"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["service"]["query"] == "label_values(circuit_breaker_state, job)"
    assert variables["breaker"]["query"].startswith('label_values(circuit_breaker_state{job="$service"}')
    for panel in panels(board):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert 'job="$service"' in target["expr"], (panel["title"], target["expr"])
    annotations = [a for a in board["annotations"]["list"] if "circuit_breaker_transitions_total" in a.get("expr", "")]
    assert annotations and annotations[0]["enable"]
    links = [
        link["url"]
        for panel in panels(board)
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    ]
    jaeger = [url for url in links if url.startswith("${jaeger_url}/search?service=${service}&tags=")]
    assert jaeger, "no panel links to the breaker's traces in Jaeger"
    # The tag search is {"circuit_breaker.name":"<breaker>"}, URL-encoded.
    assert all("%7B%22circuit_breaker.name%22%3A%22" in url for url in jaeger)


@pytest.mark.parametrize(("name", "breaker", "failure_rate_threshold"), [(n, *v) for n, v in PER_BREAKER.items()])
def test_per_breaker_dashboard_shows_what_the_issue_lists(
    name: str, breaker: str, failure_rate_threshold: float
) -> None:
    board = load(name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["breaker"]["current"]["value"] == breaker
    by_title = {panel["title"]: panel for panel in panels(board)}
    queries = exprs(board)

    def shown(pattern: str) -> bool:
        return any(re.search(pattern, q) for q in queries)

    assert by_title["State over time"]["type"] == "state-timeline"
    assert shown(r"circuit_breaker_state\{")
    assert shown(r"sum by \(circuit_breaker_outcome\) \(rate\(circuit_breaker_calls_total\{")
    assert shown(r'circuit_breaker_calls_total\{[^}]*circuit_breaker_outcome="rejected"')
    assert shown(r"circuit_breaker_fallbacks_total\{")
    assert shown(r"histogram_quantile\(0\.99, .*circuit_breaker_call_duration_seconds_bucket\{")
    assert shown(r"circuit_breaker_time_in_state_seconds_total\{")

    def threshold(title: str) -> float:
        defaults = by_title[title]["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
        value: float = defaults["thresholds"]["steps"][-1]["value"]
        return value

    assert "circuit_breaker_failure_rate{" in by_title["Failure rate"]["targets"][0]["expr"]
    assert threshold("Failure rate") == failure_rate_threshold
    assert "circuit_breaker_slow_call_rate{" in by_title["Slow-call rate"]["targets"][0]["expr"]
    assert 0 < threshold("Slow-call rate") <= 1


SHOWN_SETTINGS = (
    "failure_threshold",
    "failure_rate_threshold",
    "slow_call_duration",
    "slow_call_rate_threshold",
    "minimum_calls",
    "window_size",
    "open_timeout",
    "half_open_max_calls",
    "success_threshold",
)


def test_dashboard_settings_are_the_service_plugins_defaults() -> None:
    from otel_cb import CircuitBreakerConfig
    from otel_cb._config import parse_duration

    plugins = pytest.importorskip("otel_cb_services", reason="the service plugins (plugins/) are not installed")
    for spec in generator().BREAKERS:
        module = next(
            m
            for m in (
                importlib.import_module(f"{plugins.__name__}.{n}") for n in ("sentinel", "shield", "edge_agent", "db")
            )
            if m.BREAKER == spec.breaker
        )
        defaults = module.DEFAULTS
        preset = CircuitBreakerConfig.preset(defaults.get("preset", "default"))
        for key in SHOWN_SETTINGS:
            expected = defaults.get(key, getattr(preset, key))
            if isinstance(expected, str):
                expected = parse_duration(key, expected)
            assert getattr(spec.config, key) == expected, (spec.breaker, key)


def test_overview_covers_every_breaker_of_the_service() -> None:
    board = load("otel-cb-overview.json")
    breaker = next(v for v in board["templating"]["list"] if v["name"] == "breaker")
    assert breaker["multi"] and breaker["includeAll"] and breaker["allValue"] == ".+"
    for query in exprs(board):
        assert 'circuit_breaker_name=~"$breaker"' in query, query
    titles = {panel["title"] for panel in panels(board)}
    assert {"Breakers open", "State over time", "Rejected calls per second", "Failure rate"} <= titles


# -- alert rules -----------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alerts_are_the_operations_guide_s() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) == ALERTS
    assert by_name["CircuitBreakerOpen"]["labels"]["severity"] == "critical"
    assert by_name["CircuitBreakerOpen"]["for"] == "1m"
    assert by_name["CircuitBreakerStuckOpen"]["for"] == "10m"
    assert by_name["CircuitBreakersMultipleOpen"]["for"] == "2m"
    assert by_name["CircuitBreakerHighFailureRate"]["for"] == "3m"
    assert "[1h]" in by_name["CircuitBreakerFlapping"]["expr"]
    assert by_name["CircuitBreakerHighRejectionRate"]["for"] == "2m"


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = tool("promtool")
    result = run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules found" in result.stdout
    result = run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def mutated_suite(tmp_path: Path, alert: str, mutate: str) -> subprocess.CompletedProcess[str]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for group in document["groups"]:
        for rule in list(group["rules"]):
            if rule["alert"] != alert:
                continue
            if mutate == "drop":
                group["rules"].remove(rule)
            else:  # without its threshold the alert fires for every series it sees
                original = rule["expr"].strip()
                rule["expr"] = re.sub(r"\s*(==|>=|>)\s*[0-9.]+$", "", original)
                assert rule["expr"] != original, alert
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(document))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    return run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=tmp_path)


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_rule_tests_see_each_alert_fire_and_stay_silent(tmp_path: Path, alert: str) -> None:
    # The unit tests must fail when the alert never fires ...
    assert mutated_suite(tmp_path, alert, "drop").returncode != 0
    # ... and when it fires where it should not.
    assert mutated_suite(tmp_path, alert, "no-threshold").returncode != 0


# -- the compose stack -----------------------------------------------------------------------


def test_stack_files_fit_together() -> None:
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"otel-collector", "jaeger", "prometheus", "grafana"}
    mounts = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert (GRAFANA / source).exists(), source
            mounts[target] = (GRAFANA / source).resolve()

    collector = yaml.safe_load((GRAFANA / "otel-collector.yml").read_text())
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], (kind, component)
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert "otlp/jaeger" in collector["service"]["pipelines"]["traces"]["exporters"]
    assert "prometheus" in collector["service"]["pipelines"]["metrics"]["exporters"]

    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    scrape = prometheus["scrape_configs"][0]
    assert scrape["honor_labels"] is True  # keeps job = service.name from the collector
    assert scrape["static_configs"][0]["targets"] == ["otel-collector:8889"]
    assert collector["exporters"]["prometheus"]["endpoint"].endswith(":8889")
    for rule_file in prometheus["rule_files"]:
        assert mounts[f"/etc/prometheus/{rule_file}"] == (PROMETHEUS / rule_file).resolve()

    provisioning = mounts["/etc/grafana/provisioning"]
    dashboards = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())
    assert mounts[dashboards["providers"][0]["options"]["path"]] == DASHBOARDS.resolve()
    datasources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())
    types = {source["type"]: source["url"] for source in datasources["datasources"]}
    assert types == {"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"}
