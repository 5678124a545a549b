"""Subprocess tests of otel-cb-instrument and otel-cb on small real applications (tests/apps)."""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.harness import APPS, base_env, plugin_site, run

pytestmark = pytest.mark.timeout(120)

UNPROTECTED = "OUTCOMES " + " ".join(["failure"] * 8)
PROTECTED = "OUTCOMES " + " ".join(["failure"] * 5 + ["CircuitOpenError"] * 3)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plugin_site(tmp_path_factory.mktemp("plugins"))


def test_without_otel_cb_the_app_is_unprotected(site: Path) -> None:
    result = run(sys.executable, "app_basic.py", env=base_env(site))
    assert result.returncode == 0, result.stderr
    assert UNPROTECTED in result.stdout
    assert result.stderr == ""


def test_breakers_are_active_without_code_changes(site: Path) -> None:
    result = run("otel-cb-instrument", "python", "app_basic.py", env=base_env(site))
    assert result.returncode == 0, result.stderr
    assert PROTECTED in result.stdout
    assert "OK ok from up.example" in result.stdout  # unprotected path untouched
    # automatic breakers per destination; the URL's credentials, path and query never reach a name
    assert "BREAKERS ['http://down.example:80', 'http://up.example:80']" in result.stdout
    assert "STATE http://down.example:80 closed -> open" in result.stderr  # otel_cb_state_change
    for secret in ("pw", "secret", "token"):
        assert secret not in result.stdout


def test_python_dash_m(site: Path) -> None:
    result = run("otel-cb-instrument", "python", "-m", "cbapp", env=base_env(site))
    assert result.returncode == 0, result.stderr
    assert PROTECTED in result.stdout


def test_console_script(site: Path) -> None:
    result = run("otel-cb-instrument", str(site / "bin" / "cbtest-app"), env=base_env(site))
    assert result.returncode == 0, result.stderr
    assert PROTECTED in result.stdout


def test_child_python_process_is_covered(site: Path) -> None:
    result = run("otel-cb-instrument", "python", "app_parent.py", env=base_env(site))
    assert result.returncode == 0, result.stderr
    assert f"CHILD {PROTECTED}" in result.stdout


def test_users_sitecustomize_still_runs(site: Path) -> None:
    env = base_env(APPS / "usersite", site)
    result = run("otel-cb-instrument", "python", "-c",
                 "import builtins, fakeclient, otel_cb._plugins as p; "
                 "print(getattr(builtins, 'USER_SITECUSTOMIZE', False), p.active() is not None)", env=env)
    assert result.returncode == 0, result.stderr
    # the user's module ran in the application's process, alongside our bootstrap
    assert result.stdout.split() == ["True", "True"]
    # once in the otel-cb-instrument launcher (a Python process on the same PYTHONPATH), once in the app
    assert result.stderr.count("USER SITECUSTOMIZE RAN") == 2


def test_config_file_routes_calls_to_named_breakers(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "cb.yaml"
    config.write_text(
        "circuit_breakers:\n"
        "  defaults: {preset: default}\n"
        "  down_client: {preset: aggressive, match: {http: ['http://down.example']}}\n"
        "auto_breakers: {enabled: false}\n"
    )
    result = run("otel-cb-instrument", "--config", str(config), "python", "app_basic.py", env=base_env(site))
    assert result.returncode == 0, result.stderr
    # aggressive: 3 consecutive failures open it
    assert "OUTCOMES " + " ".join(["failure"] * 3 + ["CircuitOpenError"] * 5) in result.stdout
    assert "BREAKERS ['down_client']" in result.stdout  # auto breakers off: up.example unprotected


def test_disable_skips_a_plugin(site: Path) -> None:
    result = run("otel-cb-instrument", "--disable", "testplugin,raising,broken_import", "python", "app_basic.py",
                 env=base_env(site))
    assert result.returncode == 0, result.stderr
    assert UNPROTECTED in result.stdout
    assert "broken" not in result.stderr and "raising" not in result.stderr
    env = base_env(site, OTEL_CB_DISABLED="testplugin")
    assert UNPROTECTED in run("otel-cb-instrument", "python", "app_basic.py", env=env).stdout


def test_broken_plugins_are_logged_once_and_skipped(site: Path) -> None:
    result = run("otel-cb-instrument", "python", "app_basic.py", env=base_env(site))
    assert result.returncode == 0
    assert PROTECTED in result.stdout  # the other plugins and the app carry on
    lines = result.stderr.splitlines()
    assert sum("'broken_import'" in line and "failed to import" in line for line in lines) == 1
    # raises in otel_cb_select_breaker for every new destination: logged once with its name
    assert sum("'raising' raised in otel_cb_select_breaker" in line for line in lines) == 1
    assert sum("'raising' raised in otel_cb_configure" in line for line in lines) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("circuit_breakers:\n  a: {preset: nope}\n", ":2: circuit_breakers.a.preset: 'nope' is not a preset"),
        ("circuit_breakers:\n  a: {open_timeout: soon}\n", "circuit_breakers.a.open_timeout: 'soon' is not a duration"),
        ("circuit_breakers: [\n", "not valid YAML"),
        ("circuit_breakers:\n  a: {match: {http: ['http://h/path?q=1']}}\n", "without credentials, path or query"),
        ("surprise: 1\n", "surprise: unknown key"),
    ],
)
def test_bad_config_is_one_line_and_exit_2_before_the_app_starts(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    result = run("otel-cb-instrument", "--config", str(config), "python", "-c", "print('APP STARTED')",
                 env=base_env())
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("otel-cb-instrument: invalid config: ")
    assert expected in result.stderr


def test_bad_config_from_environment_and_missing_file(tmp_path: Path) -> None:
    env = base_env(OTEL_CB_CONFIG=str(tmp_path / "missing.yaml"))
    result = run("otel-cb-instrument", "python", "-c", "print('APP STARTED')", env=env)
    assert (result.returncode, result.stdout, len(result.stderr.splitlines())) == (2, "", 1)
    assert "missing.yaml' is not a readable file" in result.stderr


def test_command_not_found() -> None:
    result = run("otel-cb-instrument", "no-such-command-xyz", env=base_env())
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "otel-cb-instrument: command not found: no-such-command-xyz\n"


def test_usage_error_is_one_line() -> None:
    result = run("otel-cb-instrument", env=base_env())
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1


def test_clean_run_prints_nothing_without_collector() -> None:
    # Default exporters (OTLP) and nothing listening: no traceback, no retry spam.
    env = base_env()
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"):
        del env[name]
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://user:pw@127.0.0.1:9"  # discard port: connection refused
    env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
    result = run("otel-cb-instrument", "python", "-c", "print('hello')", env=env)
    assert result.returncode == 0
    assert result.stdout == "hello\n"
    assert "Traceback" not in result.stderr
    assert "Transient error" not in result.stderr
    # one notice, saying where telemetry would go (never the endpoint's credentials)
    assert result.stderr == "otel-cb sends traces, metrics and logs over OTLP/gRPC to http://127.0.0.1:9.\n"


def test_otel_cb_plugins_lists_every_plugin(site: Path) -> None:
    result = run("otel-cb", "plugins", env=base_env(site))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert result.stdout.splitlines()[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    assert rows["testplugin"].split() == ["testplugin", "otel-cb-testplugin", "1.2.3", "loaded"]
    assert rows["raising"].split()[-1] == "loaded"
    assert "failed: ImportError: otel_cb_testplugin.broken_import is broken on purpose" in rows["broken_import"]
    assert rows["httpx"].split()[:2] == ["httpx", "otel-cb"]
    disabled = run("otel-cb", "plugins", "--disable", "testplugin", env=base_env(site))
    assert "disabled" in next(line for line in disabled.stdout.splitlines() if line.startswith("testplugin"))


def test_otel_cb_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("circuit_breakers:\n  sentinel_client: {preset: aggressive, match: {http: ['http://sentinel:8080']}}\n")
    result = run("otel-cb", "config", "check", str(good), env=base_env())
    assert result.returncode == 0, result.stderr
    assert "OK (1 breaker(s): sentinel_client)" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("circuit_breakers:\n  a: {preset: nope}\n  b: {window_type: weekly}\nauto_breakers: {max: 0}\n")
    result = run("otel-cb", "config", "check", str(bad), env=base_env())
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:2: circuit_breakers.a.preset: 'nope'")
    assert lines[1].startswith(f"{bad}:3: circuit_breakers.b.window_type: 'weekly'")
    assert lines[2].startswith(f"{bad}:4: auto_breakers.max: 0 is not allowed")
    assert lines[3] == f"otel-cb: {bad}: 3 error(s)"


# -- OpenTelemetry: ordering and nothing set up twice ------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


SPAN_INSIDE = "PROBE current span: 'GET' recording=True"


@pytest.mark.parametrize(
    "command",
    [
        ["otel-cb-instrument"],
        ["otel-cb-instrument", "opentelemetry-instrument"],
        ["opentelemetry-instrument", "otel-cb-instrument"],
    ],
    ids=["alone", "outside-opentelemetry-instrument", "inside-opentelemetry-instrument"],
)
def test_our_wrapper_runs_inside_opentelemetry_client_span(site: Path, http_url: str, command: list[str]) -> None:
    env = base_env(site, OTEL_CB_TESTPLUGIN_PROBE="1", OTEL_TRACES_EXPORTER="console")
    result = run(*command, "python", "app_httpx.py", http_url, env=env)
    assert result.returncode == 0, result.stderr
    assert "STATUS 200" in result.stdout
    # our patch of HTTPTransport.handle_request ran once, inside OpenTelemetry's client span
    assert result.stderr.count("PROBE current span") == 1, result.stderr
    assert SPAN_INSIDE in result.stderr
    # exactly one span exported: one SDK, one httpx instrumentor
    assert result.stdout.count('"name": "GET"') == 1, result.stdout
    assert "Overriding of current" not in result.stderr
    assert "Attempting to instrument while already instrumented" not in result.stderr


def test_the_config_found_in_the_current_directory_is_used_by_children_elsewhere(site: Path, tmp_path: Path) -> None:
    (tmp_path / "otel-cb.yaml").write_text("circuit_breakers:\n  down: {match: {http: ['http://down.example']}}\n")
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, subprocess, sys\n"
        f"os.chdir({str(APPS)!r})\n"
        "subprocess.run([sys.executable, 'app_basic.py'], check=True)\n"
    )
    result = run("otel-cb-instrument", "python", str(script), env=base_env(site), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "BREAKERS ['down', 'http://up.example:80']" in result.stdout


@pytest.mark.parametrize("otel_first", [True, False], ids=["otel-first", "otel-cb-first"])
def test_programmatic_instrument_runs_inside_the_client_span_in_either_order(site: Path, http_url: str,
                                                                             otel_first: bool) -> None:
    code = (
        "import sys, httpx, otel_cb\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        + ("HTTPXClientInstrumentor().instrument(); otel_cb.instrument({})\n" if otel_first else
           "otel_cb.instrument({}); HTTPXClientInstrumentor().instrument()\n")
        + "print('STATUS', httpx.get(sys.argv[1]).status_code)\n"
    )
    env = base_env(site, OTEL_CB_TESTPLUGIN_PROBE="1", OTEL_CB_DISABLED="raising,broken_import")
    result = run(sys.executable, "-c", code, http_url, env=env)
    assert "STATUS 200" in result.stdout, result.stderr
    assert SPAN_INSIDE in result.stderr


def test_a_raising_user_sitecustomize_is_reported_and_the_app_runs(site: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("raise RuntimeError('user sitecustomize is broken')\n")
    result = run("otel-cb-instrument", "python", "app_basic.py", env=base_env(tmp_path, site))
    assert result.returncode == 0
    assert PROTECTED in result.stdout
    assert "the application's sitecustomize" in result.stderr and "user sitecustomize is broken" in result.stderr


def test_pre_instrument_does_nothing_without_otel_cb_instrument(site: Path) -> None:
    # Installing otel-cb must not change what opentelemetry-instrument alone does.
    result = run("opentelemetry-instrument", "python", "app_basic.py", env=base_env(site))
    assert result.returncode == 0, result.stderr
    assert UNPROTECTED in result.stdout
