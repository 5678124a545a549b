"""Grafana dashboards for otel-cb breakers, as code.

This module owns the dashboards in ``grafana/dashboards/``: one overview of
every breaker of a service and one dashboard per service breaker of the
incident manager (``sentinel_client``, ``shield_client``, ``edge_agent_client``,
``database_pool``). The JSON files are generated from here with Grafana's
``grafana-foundation-sdk`` and committed; ``tests/test_grafana.py`` fails when
they differ from what this module produces. After changing a panel, run::

    .venv/bin/python grafana/generate_dashboards.py

Metric and label names are the Prometheus form of the OpenTelemetry names in
``otel_cb.telemetry`` (dots become underscores, counters end in ``_total``,
seconds in ``_seconds``). The ``service`` variable is Prometheus's ``job``
label: the collector's Prometheus exporter sets it to ``service.name``, and a
directly scraped application gets it from a scrape job named after the service.

Thresholds drawn on the rate panels are the service plugins' default settings
(``plugins/otel_cb_services``); ``tests/test_grafana.py`` checks they agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    dashboard,
    prometheus,
    stat,
    statetimeline,
    table,
    text,
    timeseries,
)
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model
from grafana_foundation_sdk.models import text as text_model

from otel_cb import CircuitBreakerConfig

__all__ = ["BREAKERS", "DASHBOARD_DIR", "BreakerDashboard", "render", "main"]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "otel-cb"

# State gauge values become one number per breaker so a state timeline can draw
# one row per breaker; closed is 0, so a closed breaker adds nothing to the sum.
STATE_CODES: tuple[tuple[str, int, str], ...] = (
    ("closed", 0, "green"),
    ("open", 1, "red"),
    ("half_open", 2, "yellow"),
    ("forced_open", 3, "purple"),
    ("disabled", 4, "text"),
)


@dataclass(frozen=True)
class BreakerDashboard:
    """One per-breaker dashboard: which breaker, what it protects and its settings."""

    slug: str
    title: str
    breaker: str
    protects: str
    config: CircuitBreakerConfig


# The default settings of the service plugins (plugins/otel_cb_services, issue 8), which the
# thresholds on the rate panels mirror; tests/test_grafana.py checks they still agree.
BREAKERS: tuple[BreakerDashboard, ...] = (
    BreakerDashboard(
        "sentinel",
        "Sentinel",
        "sentinel_client",
        "Sentinel, the anomaly-detection REST API. While the breaker is open, `GET /api/v1/alerts` "
        "is served from the last good alert list (a fallback, marked stale) and `POST /api/v1/analyze` fails fast.",
        CircuitBreakerConfig.preset(
            "default",
            failure_threshold=3,
            failure_rate_threshold=0.3,
            minimum_calls=5,
            window_size=30,
            open_timeout=10.0,
        ),
    ),
    BreakerDashboard(
        "shield",
        "Shield",
        "shield_client",
        "Shield, the gRPC security analysis. It fails closed: no fallback ever passes unscanned content "
        "as scanned, so a failed fallback here is the expected, safe outcome.",
        CircuitBreakerConfig.preset("aggressive"),
    ),
    BreakerDashboard(
        "edge-agent",
        "EdgeAgent",
        "edge_agent_client",
        "EdgeAgent, the gRPC edge inference proxy. Each `StreamInference` stream is one call: "
        "a stream that breaks before it finishes is a failure.",
        CircuitBreakerConfig.preset(
            "default", failure_threshold=2, failure_rate_threshold=0.2, open_timeout=5.0, success_threshold=5
        ),
    ),
    BreakerDashboard(
        "database",
        "Incident database",
        "database_pool",
        "The PostgreSQL incident database (asyncpg pool).",
        CircuitBreakerConfig.preset("database"),
    ),
)

# The overview draws the alert threshold of the failure-rate alert (prometheus/alerts.yml).
ALERT_FAILURE_RATE = 0.3


# -- queries -------------------------------------------------------------------------------------


def selector(breaker_match: str, *matchers: str) -> str:
    """Label matchers of one service's breakers, plus ``matchers`` (e.g. ``circuit_breaker_outcome="rejected"``).

    ``breaker_match`` is ``="$breaker"`` (one breaker) or ``=~"$breaker"`` (the overview's selection).
    """
    return "{" + ",".join(['job="$service"', f"circuit_breaker_name{breaker_match}", *matchers]) + "}"


def per_second(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{sel}[$__rate_interval]))"


def in_range(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (increase({metric}{sel}[$__range]))"


def latency(quantile: float, sel: str, by: str) -> str:
    return f"histogram_quantile({quantile}, {per_second('circuit_breaker_call_duration_seconds_bucket', sel, by)})"


def state_code(breaker_match: str) -> str:
    """One number per breaker from the per-state gauge series (see ``STATE_CODES``)."""
    terms = []
    for state, code, _ in STATE_CODES:
        if code:
            sel = selector(breaker_match, 'circuit_breaker_state="' + state + '"')
            terms.append(f"{code} * max by (circuit_breaker_name) (circuit_breaker_state{sel})")
    return " + ".join(terms)


def query(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return q.instant() if instant else q.range()


def state_mappings() -> list[model.ValueMapping]:
    return [
        model.ValueMap(
            options={
                str(code): model.ValueMappingResult(text=state, color=color, index=index)
                for index, (state, code, color) in enumerate(STATE_CODES)
            }
        )
    ]


def steps(*pairs: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in pairs])
    )


def jaeger_link(breaker: str) -> dashboard.DashboardLink:
    """A link to Jaeger's search for spans tagged with the breaker's name, over the dashboard's time range."""
    tags = "%7B%22circuit_breaker.name%22%3A%22" + breaker + "%22%7D"
    return (
        dashboard.DashboardLink("Traces of this breaker in Jaeger")
        .type(model.DashboardLinkType.LINK)
        .url(f"${{jaeger_url}}/search?service=${{service}}&tags={tags}&start=${{__from}}000&end=${{__to}}000&limit=50")
        .target_blank(True)
    )


def threshold_line() -> common_builders.GraphThresholdsStyleConfig:
    return common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)


def series(title: str, unit: str, *targets: prometheus.Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit).height(8).span(12)
    panel = panel.fill_opacity(10).line_width(1).span_nulls(False)
    panel = panel.legend(
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    ).tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.NONE))
    for target in targets:
        panel = panel.with_target(target)
    return panel


def against(panel: timeseries.Panel, threshold: float) -> timeseries.Panel:
    """``panel`` with ``threshold`` drawn as a red line."""
    return panel.thresholds(steps((None, "green"), (threshold, "red"))).thresholds_style(threshold_line())


def ratio(title: str, description: str, expr: str, legend: str, threshold: float | None) -> timeseries.Panel:
    """A 0..1 rate over time, against its threshold when there is one."""
    panel = series(title, "percentunit", query(expr, legend)).description(description).min(0).max(1)
    return panel if threshold is None else against(panel, threshold)


def state_stat(title: str, code: str, link: dashboard.DashboardLink, span: int) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(query(code, "{{circuit_breaker_name}}", instant=True))
        .mappings(state_mappings())
        .color_scheme(dashboard.FieldColor().mode(model.FieldColorModeId.FIXED).fixed_color("text"))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME if span > 4 else common.BigValueTextMode.VALUE)
        .data_links([link])
        .height(5)
        .span(span)
    )


def number(title: str, expr: str, legend: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend, instant=True))
        .decimals(0)
        .color_mode(common.BigValueColorMode.NONE)
        .height(5)
        .span(4)
    )


def state_timeline(code: str, link: dashboard.DashboardLink, height: int) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title("State over time")
        .datasource(DATASOURCE)
        .with_target(query(code, "{{circuit_breaker_name}}"))
        .mappings(state_mappings())
        .color_scheme(dashboard.FieldColor().mode(model.FieldColorModeId.FIXED).fixed_color("text"))
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
        .data_links([link])
        .height(height)
        .span(24)
    )


def seconds_bars(title: str, description: str, expr: str, legend: str) -> bargauge.Panel:
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend, instant=True))
        .unit("s")
        .min(0)
        .orientation(common.VizOrientation.HORIZONTAL)
        .height(6)
        .span(12)
    )


def transitions_table(sel: str, by: str, legend: str) -> table.Panel:
    return (
        table.Panel()
        .title("Transitions in range")
        .description("Every state change in the time range, by reason; they are also drawn as annotations.")
        .datasource(DATASOURCE)
        .with_target(
            query(in_range("circuit_breaker_transitions_total", sel, by), legend, instant=True).format(
                prometheus_model.PromQueryFormat.TABLE
            )
        )
        .show_header(True)
        .height(8)
        .span(12)
    )


# -- annotations and variables -------------------------------------------------------------------


class _PrometheusAnnotation(model.AnnotationQuery):
    """Grafana's Prometheus annotation fields the SDK's generic model does not carry."""

    def __init__(self, step: str, title_format: str, text_format: str, tag_keys: str, **kwargs: typing.Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.title_format = title_format
        self.text_format = text_format
        self.tag_keys = tag_keys

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            step=self.step, titleFormat=self.title_format, textFormat=self.text_format, tagKeys=self.tag_keys
        )
        return payload


class TransitionsAnnotation(cogbuilder.Builder[model.AnnotationQuery]):
    """Marks every state transition on the time axis of every panel."""

    def __init__(self, breaker_match: str) -> None:
        by = "circuit_breaker_name, circuit_breaker_previous_state, circuit_breaker_state, circuit_breaker_reason"
        self._internal = _PrometheusAnnotation(
            name="Breaker transitions",
            datasource=DATASOURCE,
            enable=True,
            icon_color="orange",
            expr=f"sum by ({by}) (increase(circuit_breaker_transitions_total{selector(breaker_match)}[1m])) > 0",
            step="30s",
            title_format="{{circuit_breaker_name}}: {{circuit_breaker_previous_state}} -> {{circuit_breaker_state}}",
            text_format="reason: {{circuit_breaker_reason}}",
            tag_keys="circuit_breaker_name,circuit_breaker_state,circuit_breaker_reason",
        )

    def build(self) -> model.AnnotationQuery:
        return self._internal


def variables(breaker: str | None) -> list[cogbuilder.Builder[model.VariableModel]]:
    """datasource, service (Prometheus ``job``), breaker and the Jaeger URL used by the trace links.

    ``breaker`` is the preselected breaker of a per-breaker dashboard; None makes
    the overview's multi-value variable that defaults to every breaker.
    """
    breaker_var = (
        dashboard.QueryVariable("breaker")
        .label("Breaker")
        .datasource(DATASOURCE)
        .query('label_values(circuit_breaker_state{job="$service"}, circuit_breaker_name)')
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if breaker is None:
        breaker_var = (
            breaker_var.multi(True)
            .include_all(True)
            .all_value(".+")
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    else:
        breaker_var = breaker_var.current(model.VariableOption(selected=True, text=breaker, value=breaker))
    return [
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        dashboard.QueryVariable("service")
        .label("Service")
        .description("service.name of the instrumented application, which Prometheus holds as the job label")
        .datasource(DATASOURCE)
        .query("label_values(circuit_breaker_state, job)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC),
        breaker_var,
        dashboard.TextBoxVariable("jaeger_url")
        .label("Jaeger URL")
        .description("Base URL of the Jaeger UI that the trace links open")
        .default_value("http://localhost:16686"),
    ]


def base(uid: str, title: str, description: str, breaker: str | None) -> dashboard.Dashboard:
    match = "=~" if breaker is None else "="
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(variables(breaker))
        .annotation(TransitionsAnnotation(f'{match}"$breaker"'))
        .link(
            dashboard.DashboardLink("otel-cb dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


# -- dashboards ----------------------------------------------------------------------------------


def describe(config: CircuitBreakerConfig) -> str:
    rules = []
    if config.failure_threshold is not None:
        rules.append(f"{config.failure_threshold} consecutive failures")
    window = f"{config.window_size:g} {'s' if config.window_type == 'time' else 'calls'}"
    if config.failure_rate_threshold is not None:
        rules.append(f"a failure rate of {config.failure_rate_threshold:g}")
    if config.slow_call_duration is not None:
        rules.append(f"a slow-call rate of {config.slow_call_rate_threshold:g} (slow: {config.slow_call_duration:g} s)")
    return (
        f"Opens on {', or '.join(rules)}; the rates count once the {window} window holds "
        f"{config.minimum_calls} calls. Stays open {config.open_timeout:g} s, then admits "
        f"{config.half_open_max_calls} probes at a time and closes after {config.success_threshold} probe successes."
    )


def breaker_dashboard(spec: BreakerDashboard) -> dashboard.Dashboard:
    one = '="$breaker"'
    sel = selector(one)
    config = spec.config
    code = state_code(one)
    link = jaeger_link("${breaker}")
    outcome = "circuit_breaker_outcome"
    board = base(
        f"otel-cb-{spec.slug}",
        f"otel-cb / {spec.title} breaker ({spec.breaker})",
        f"The {spec.breaker} circuit breaker: state, calls, rates against thresholds, fallbacks, latency.",
        spec.breaker,
    ).link(jaeger_link("${breaker}"))
    board = board.with_row(dashboard.Row("State"))
    board = board.with_panel(
        text.Panel()
        .title("What this breaker protects")
        .mode(text_model.TextMode.MARKDOWN)
        .content(f"{spec.protects}\n\n{describe(config)}")
        .height(6)
        .span(8)
    )
    board = board.with_panel(state_stat("Current state", code, link, span=4).height(6))
    board = board.with_panel(
        seconds_bars(
            "Time spent in each state",
            "Seconds in each state over the dashboard's time range (circuit_breaker.time_in_state).",
            in_range("circuit_breaker_time_in_state_seconds_total", sel, "circuit_breaker_state"),
            "{{circuit_breaker_state}}",
        )
    )
    board = board.with_panel(state_timeline(code, link, height=5))
    board = board.with_row(dashboard.Row("Calls"))
    board = board.with_panel(
        series(
            "Calls per second by outcome",
            "reqps",
            query(per_second("circuit_breaker_calls_total", sel, outcome), "{{circuit_breaker_outcome}}"),
        )
        .description("success, failure, ignored (neither), rejected (failed fast while open).")
        .data_links([link])
    )
    rejected = selector(one, 'circuit_breaker_outcome="rejected"')
    board = board.with_panel(
        series(
            "Rejected calls per second",
            "reqps",
            query(per_second("circuit_breaker_calls_total", rejected, "circuit_breaker_name"), "rejected"),
        )
        .description("Calls that failed fast with CircuitOpenError instead of waiting on the dependency.")
        .data_links([link])
    )
    board = board.with_panel(
        series(
            "Fallbacks served per second",
            "reqps",
            query(per_second("circuit_breaker_fallbacks_total", sel, outcome), "fallback {{circuit_breaker_outcome}}"),
        ).description("Fallbacks that answered a rejected or failed call (success) or raised themselves (failure).")
    )
    board = board.with_panel(
        series(
            "Slow calls per second by outcome",
            "reqps",
            query(per_second("circuit_breaker_slow_calls_total", sel, outcome), "slow {{circuit_breaker_outcome}}"),
        ).description(f"Calls slower than {config.slow_call_duration} s.")
    )
    board = board.with_panel(
        series(
            "Health checks per second by outcome",
            "reqps",
            query(per_second("circuit_breaker_health_checks_total", sel, outcome), "check {{circuit_breaker_outcome}}"),
        ).description(
            "Health checks run while the breaker is open (circuit_breaker.health_checks): failed ones keep user "
            f"calls from being sent as probes; {config.healthy_threshold} passed in a row move it to half-open."
        )
    )
    board = board.with_row(dashboard.Row("Rates against thresholds"))
    board = board.with_panel(
        ratio(
            "Failure rate",
            f"Failure ratio in the window; the breaker opens at {config.failure_rate_threshold} (red line).",
            f"max by (circuit_breaker_name) (circuit_breaker_failure_rate{sel})",
            "failure rate",
            config.failure_rate_threshold,
        )
    )
    board = board.with_panel(
        ratio(
            "Slow-call rate",
            f"Slow-call ratio in the window; the breaker opens at {config.slow_call_rate_threshold} (red line).",
            f"max by (circuit_breaker_name) (circuit_breaker_slow_call_rate{sel})",
            "slow-call rate",
            config.slow_call_rate_threshold,
        )
    )
    board = board.with_panel(
        against(
            series(
                "Calls in the window",
                "short",
                query(f"max by (circuit_breaker_name) (circuit_breaker_buffered_calls{sel})", "buffered calls"),
            )
            .description(f"The rate rules apply once the window holds {config.minimum_calls} calls (red line).")
            .min(0),
            config.minimum_calls,
        )
    )
    board = board.with_panel(
        transitions_table(
            sel,
            "circuit_breaker_previous_state, circuit_breaker_state, circuit_breaker_reason",
            "{{circuit_breaker_previous_state}} -> {{circuit_breaker_state}} ({{circuit_breaker_reason}})",
        )
    )
    board = board.with_row(dashboard.Row("Latency"))
    percentiles = series(
        "Call latency percentiles",
        "s",
        *(
            query(latency(q, sel, "le"), f"p{int(q * 100)}", ref=ref)
            for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
        ),
    ).description("Duration of admitted calls (circuit_breaker.call.duration); rejected calls take no time.")
    board = board.with_panel(percentiles.data_links([link]))
    board = board.with_panel(
        series(
            "p95 latency by outcome",
            "s",
            query(latency(0.95, sel, f"le, {outcome}"), "p95 {{circuit_breaker_outcome}}"),
        )
    )
    return board


def overview_dashboard() -> dashboard.Dashboard:
    many = '=~"$breaker"'
    sel = selector(many)
    code = state_code(many)
    link = jaeger_link("${__field.labels.circuit_breaker_name}")
    name = "circuit_breaker_name"
    board = base(
        "otel-cb-overview",
        "otel-cb / Breakers of a service",
        "Every circuit breaker of one service: which are open, traffic, rejections, rates and latency.",
        None,
    )
    board = board.with_row(dashboard.Row("Now"))
    open_now = selector(many, 'circuit_breaker_state=~"open|forced_open"')
    board = board.with_panel(
        number(
            "Breakers open",
            f"sum(circuit_breaker_state{open_now})",
            "open",
        )
        .description("Open or forced open right now.")
        .thresholds(steps((None, "green"), (1, "red")))
        .color_mode(common.BigValueColorMode.BACKGROUND)
    )
    board = board.with_panel(
        number("Breakers", f"count(count by (circuit_breaker_name) (circuit_breaker_state{sel}))", "breakers")
    )
    rejected = selector(many, 'circuit_breaker_outcome="rejected"')
    board = board.with_panel(
        number("Rejected calls in range", f"sum(increase(circuit_breaker_calls_total{rejected}[$__range]))", "rejected")
    )
    board = board.with_panel(state_stat("State of each breaker", code, link, span=12))
    board = board.with_panel(state_timeline(code, link, height=8))
    board = board.with_row(dashboard.Row("Traffic"))
    admitted = selector(many, 'circuit_breaker_outcome!="rejected"')
    board = board.with_panel(
        series(
            "Admitted calls per second",
            "reqps",
            query(per_second("circuit_breaker_calls_total", admitted, name), "{{circuit_breaker_name}}"),
        ).data_links([link])
    )
    board = board.with_panel(
        against(
            series(
                "Rejected calls per second",
                "reqps",
                query(per_second("circuit_breaker_calls_total", rejected, name), "{{circuit_breaker_name}}"),
            ),
            10,
        )
        .description("The rejection alert fires above 10 per second for 2 minutes (red line).")
        .data_links([link])
    )
    board = board.with_panel(
        series(
            "Fallbacks served per second",
            "reqps",
            query(
                per_second("circuit_breaker_fallbacks_total", sel, f"{name}, circuit_breaker_outcome"),
                "{{circuit_breaker_name}} {{circuit_breaker_outcome}}",
            ),
        )
    )
    board = board.with_panel(
        series(
            "Health checks per second",
            "reqps",
            query(
                per_second("circuit_breaker_health_checks_total", sel, f"{name}, circuit_breaker_outcome"),
                "{{circuit_breaker_name}} {{circuit_breaker_outcome}}",
            ),
        ).description("Checks of open breakers that have a health check, passed or failed.")
    )
    board = board.with_panel(
        series(
            "p95 call latency", "s", query(latency(0.95, sel, f"le, {name}"), "{{circuit_breaker_name}}")
        ).data_links([link])
    )
    board = board.with_row(dashboard.Row("Rates"))
    board = board.with_panel(
        ratio(
            "Failure rate",
            f"The failure-rate alert fires above {ALERT_FAILURE_RATE} for 3 minutes (red line); "
            "each breaker's own threshold is on its dashboard.",
            f"max by (circuit_breaker_name) (circuit_breaker_failure_rate{sel})",
            "{{circuit_breaker_name}}",
            ALERT_FAILURE_RATE,
        )
    )
    board = board.with_panel(
        ratio(
            "Slow-call rate",
            "Slow share of the calls in each breaker's window.",
            f"max by (circuit_breaker_name) (circuit_breaker_slow_call_rate{sel})",
            "{{circuit_breaker_name}}",
            None,
        )
    )
    board = board.with_panel(
        transitions_table(
            sel,
            f"{name}, circuit_breaker_previous_state, circuit_breaker_state, circuit_breaker_reason",
            "{{circuit_breaker_name}}",
        )
    )
    not_closed = selector(many, 'circuit_breaker_state=~"open|half_open|forced_open"')
    board = board.with_panel(
        seconds_bars(
            "Time open in range",
            "Seconds each breaker spent open, half-open or forced open in the time range.",
            in_range("circuit_breaker_time_in_state_seconds_total", not_closed, name),
            "{{circuit_breaker_name}}",
        ).height(8)
    )
    return board


# -- output --------------------------------------------------------------------------------------


def _assign_ids(board: model.Dashboard) -> None:
    """Stable panel ids in layout order, so regenerating never reshuffles them."""
    next_id = 1
    for panel in board.panels or []:
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1


def render() -> dict[str, str]:
    """The JSON text of every dashboard, by file name."""
    boards = [("otel-cb-overview.json", overview_dashboard())]
    boards += [(f"otel-cb-{spec.slug}.json", breaker_dashboard(spec)) for spec in BREAKERS]
    result = {}
    for name, builder in boards:
        built = builder.build()
        _assign_ids(built)
        result[name] = json.dumps(built, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) grafana/dashboards/*.json.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, content in render().items():
        path = DASHBOARD_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != content:
                stale.append(name)
        else:
            DASHBOARD_DIR.mkdir(exist_ok=True)
            path.write_text(content)
    if stale:
        print(f"stale dashboards, run {Path(__file__).name}: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
