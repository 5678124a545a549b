"""Every query of every dashboard, run against a real Prometheus scraping real otel-cb telemetry.

A workload (``grafana/workload.py``) trips and recovers the four service
breakers with ``otel_cb.telemetry.configure()`` serving a Prometheus pull
endpoint (``OTEL_METRICS_EXPORTER=prometheus``) on a free loopback port. A
real ``prometheus`` (Debian package) scrapes it every second, with the
shipped alert rules loaded. Then each panel query, annotation and template
variable of each committed dashboard, with its variables filled in, goes
through Prometheus's HTTP API: it must parse, return at least one series, and
name only metrics and labels that otel-cb really emits.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_grafana import tool

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
SERVICE = "incident-manager"
BREAKERS = ("sentinel_client", "shield_client", "edge_agent_client", "database_pool")
# Grafana's built-in variables, as concrete values that suit a 1 s scrape interval.
BUILTINS = {"$__rate_interval": "5s", "$__interval": "2s", "$__range": "1m"}
DEADLINE = 30.0  # seconds to wait for the data every query needs

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # a bad query is a 400 with an error body
            body = json.load(exc)
        return body

    def query(self, expr: str, instant: bool = True) -> tuple[list[dict[str, Any]], str | None]:
        """The result series of ``expr`` now (or over the last 30 s), or the error Prometheus gave."""
        if instant:
            body = self.get("/api/v1/query", query=expr)
        else:
            now = time.time()
            body = self.get("/api/v1/query_range", query=expr, start=str(now - 30), end=str(now), step="1")
        if body["status"] != "success":
            return [], f"{body.get('errorType')}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result, None

    def value(self, expr: str) -> float:
        result, error = self.query(expr)
        assert error is None, error
        return float(result[0]["value"][1]) if result else 0.0


def wait_for(condition: Any, what: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    app_port, prom_port = free_port(), free_port()
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(app_port),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    workload = subprocess.Popen(
        [sys.executable, str(GRAFANA / "workload.py"), "--seconds", "90", "--open-timeout", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "workload.log").open("w"),
    )
    # The scrape job is named after the service, as prometheus.yml tells users to do:
    # the dashboards' service variable is the job label.
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(GRAFANA / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": SERVICE, "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "prometheus.log").open("w"),
    )
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")
    try:
        deadline = time.monotonic() + DEADLINE

        def ready() -> bool:
            assert workload.poll() is None, (work / "workload.log").read_text()
            assert server.poll() is None, (work / "prometheus.log").read_text()
            try:
                return prom.get("/api/v1/status/buildinfo")["status"] == "success"
            except (OSError, ValueError):  # not listening yet, or a plain-text 503 while it starts
                return False

        wait_for(ready, "prometheus to start", deadline)
        job = f'job="{SERVICE}"'
        # Every breaker has tripped and recovered, and every family has enough samples for rate().
        wait_for(
            lambda: (
                prom.value(
                    f'count(circuit_breaker_transitions_total{{{job},circuit_breaker_previous_state="half_open",'
                    'circuit_breaker_state="closed"})'
                )
                == len(BREAKERS)
                and prom.value(f"min(count_over_time(circuit_breaker_call_duration_seconds_count{{{job}}}[1m]))") >= 6
            ),
            "the breakers to trip and recover on the scraped metrics",
            deadline,
        )
        yield prom
    finally:
        for process in (workload, server):
            process.terminate()
        for process in (workload, server):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


# -- what a query names ------------------------------------------------------------------------

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression refers to."""
    labels: set[str] = set()
    for block in re.findall(r"\{[^}]*\}", expr):
        labels.update(_MATCHER.findall(block))
    rest = re.sub(r"\{[^}]*\}", " ", expr)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    for group in _GROUPING.findall(rest):
        labels.update(name.strip() for name in group.split(",") if name.strip())
    rest = _GROUPING.sub(" ", rest)
    rest = re.sub(r'"[^"]*"', " ", rest)
    metrics = {
        name
        for name in re.findall(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()", rest)
        if name.lower() not in _KEYWORDS
    }
    return metrics, labels


class Checker:
    """Runs queries and says what is wrong with each, in words a dashboard author can act on."""

    def __init__(self, prom: Prometheus) -> None:
        self.prom = prom
        body = prom.get("/api/v1/label/__name__/values", **{"match[]": f'{{job="{SERVICE}"}}'})
        self.emitted: set[str] = set(body["data"])
        self._labels: dict[str, set[str]] = {}

    def labels_of(self, metric: str) -> set[str]:
        if metric not in self._labels:
            body = self.prom.get("/api/v1/series", **{"match[]": f'{metric}{{job="{SERVICE}"}}'})
            self._labels[metric] = {key for series in body["data"] for key in series} - {"__name__"}
        return self._labels[metric]

    def names(self, expr: str) -> list[str]:
        metrics, labels = names_in(expr)
        problems = [f"metric {m} is not emitted" for m in sorted(metrics - self.emitted)]
        known = set().union(*(self.labels_of(m) for m in metrics & self.emitted)) if metrics else set()
        problems += [f"label {label} is on none of {sorted(metrics)}" for label in sorted(labels - known)]
        return problems

    def query(self, expr: str, instant: bool, templates: tuple[str, ...] = ()) -> list[str]:
        """Problems of one panel query or annotation; an empty list when it is fine."""
        if "$" in expr:
            return [f"unfilled variable in {expr}"]
        result, error = self.prom.query(expr, instant=instant)
        if error is not None:
            return [error]
        problems = self.names(expr)
        if not result:
            problems.append("no series")
        for template in templates:
            for label in _TEMPLATE.findall(template):
                if any(label not in series["metric"] for series in result):
                    problems.append(f"{template!r} uses label {label}, which the result series lack")
        return problems


@pytest.fixture(scope="module")
def checker(prometheus: Prometheus) -> Checker:
    return Checker(prometheus)


def fill(text: str, variables: dict[str, str]) -> str:
    for name, value in BUILTINS.items():
        text = text.replace(name, value)
    for name, value in sorted(variables.items(), key=lambda item: -len(item[0])):
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return text


def variable_values(board: dict[str, Any]) -> dict[str, str]:
    """Each template variable's value as Grafana would substitute its default selection."""
    values = {}
    for variable in board["templating"]["list"]:
        current = variable.get("current") or {}
        value = current.get("value", "")
        if value in (["$__all"], "$__all"):
            value = variable["allValue"]
        values[variable["name"]] = value
    values["service"] = SERVICE  # the service Grafana would list first: the only one here
    return values


DASHBOARD_FILES = sorted(path.name for path in (GRAFANA / "dashboards").glob("*.json"))


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_dashboard_query_returns_series_of_emitted_names(checker: Checker, name: str) -> None:
    board = json.loads((GRAFANA / "dashboards" / name).read_text())
    variables = variable_values(board)
    problems: list[str] = []
    ran = 0
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = fill(target["expr"], variables)
            legend = target.get("legendFormat", "")
            templates = (legend,) if legend != "__auto" else ()
            found = checker.query(expr, instant=target.get("instant", False), templates=templates)
            problems += [f"{panel['title']!r}: {p}\n    {expr}" for p in found]
            ran += 1
    for annotation in board["annotations"]["list"]:
        if "expr" not in annotation:
            continue
        expr = fill(annotation["expr"], variables)
        tag_keys = "".join(f"{{{{{key}}}}}" for key in annotation["tagKeys"].split(","))
        templates = (annotation["titleFormat"], annotation["textFormat"], tag_keys)
        found = checker.query(expr, instant=False, templates=templates)
        problems += [f"annotation {annotation['name']!r}: {p}\n    {expr}" for p in found]
        ran += 1
    assert ran >= 8
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_template_variables_list_the_real_services_and_breakers(
    prometheus: Prometheus, checker: Checker, name: str
) -> None:
    board = json.loads((GRAFANA / "dashboards" / name).read_text())
    variables = variable_values(board)
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)", variable["query"])
        assert match, variable["query"]
        selector, label = fill(match.group(1), variables), match.group(2)
        assert not checker.names(selector), checker.names(selector)
        body = prometheus.get("/api/v1/series", **{"match[]": selector})
        values = {series[label] for series in body["data"] if label in series}
        if variable["name"] == "service":
            assert SERVICE in values
        if variable["name"] == "breaker":
            assert values == set(BREAKERS)
            current = variable["current"]["value"]
            assert current == ["$__all"] if variable.get("multi") else current in values, current


def test_alert_rules_load_and_name_only_emitted_series(prometheus: Prometheus, checker: Checker) -> None:
    body = prometheus.get("/api/v1/rules")
    rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
    assert len(rules) == 6
    for rule in rules:
        assert rule["health"] in ("ok", "unknown"), (rule["name"], rule.get("lastError"))
        assert not checker.names(rule["query"]), (rule["name"], checker.names(rule["query"]))


def test_the_checker_catches_names_the_project_does_not_emit(checker: Checker) -> None:
    good = f'sum by (circuit_breaker_outcome) (rate(circuit_breaker_calls_total{{job="{SERVICE}"}}[5s]))'
    assert checker.query(good, instant=True, templates=("{{circuit_breaker_outcome}}",)) == []
    bad_label = good.replace("by (circuit_breaker_outcome)", "by (circuit_breaker_result)")
    assert any("circuit_breaker_result" in p for p in checker.query(bad_label, instant=True))
    bad_metric = good.replace("circuit_breaker_calls_total", "circuit_breaker_call_total")
    assert any("circuit_breaker_call_total" in p for p in checker.query(bad_metric, instant=True))
    assert checker.query(good, instant=True, templates=("{{circuit_breaker_nam}}",))
    assert checker.query("sum(rate(circuit_breaker_calls_total[5s]", instant=True)  # does not parse
