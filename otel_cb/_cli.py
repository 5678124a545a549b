"""The console scripts: ``otel-cb-instrument`` and ``otel-cb``.

``otel-cb-instrument [options] COMMAND [ARGS...]`` validates the config,
exports the options as environment variables, puts the bootstrap directory
first on ``PYTHONPATH`` and replaces itself with ``COMMAND`` (as
``opentelemetry-instrument`` does), so ``python app.py``, ``python -m pkg``,
console scripts and their child Python processes all start instrumented.

``otel-cb plugins`` lists the discovered plugins; ``otel-cb config check PATH``
validates a config file and prints every error with its location.

Usage errors, a command that is not found and an invalid config end with one
line on stderr and exit code 2, before the application starts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence

from ._problems import did_you_mean
from ._redact import mask, shown

__all__ = ["instrument_main", "main"]

EXIT_USAGE = 2

# option -> environment variable it sets (each may also be set directly)
_ENV_OPTIONS = {
    "config": "OTEL_CB_CONFIG",
    "disable": "OTEL_CB_DISABLED",
    "service_name": "OTEL_SERVICE_NAME",
    "traces_exporter": "OTEL_TRACES_EXPORTER",
    "metrics_exporter": "OTEL_METRICS_EXPORTER",
    "admin_address": "OTEL_CB_ADMIN_ADDRESS",
}
_ENV_OPTION_OF = {variable: option for option, variable in _ENV_OPTIONS.items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage block: the promise is a one-line error.
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _version() -> str:
    from ._version import __version__

    return __version__


def _instrument_parser() -> _Parser:
    parser = _Parser(
        prog="otel-cb-instrument",
        description="Run a Python application with circuit breakers on its HTTP, gRPC and database clients.",
        epilog="Each option can also be set through the environment variable named in its help.",
    )
    parser.add_argument("--config", metavar="PATH", help="config file (OTEL_CB_CONFIG; default ./otel-cb.yaml, "
                        "else [tool.otel-cb] in ./pyproject.toml)")
    parser.add_argument("--disable", metavar="NAME[,NAME...]", help="integrations or plugins to skip "
                        "(OTEL_CB_DISABLED)")
    parser.add_argument("--service-name", help="OTEL_SERVICE_NAME")
    parser.add_argument("--traces-exporter", help="OTEL_TRACES_EXPORTER: otlp, console or none")
    parser.add_argument("--metrics-exporter", help="OTEL_METRICS_EXPORTER: otlp, prometheus, console or none")
    parser.add_argument("--admin-address", metavar="ADDRESS", help="serve the admin endpoint at ADDRESS: PORT, "
                        "HOST:PORT or unix:/PATH, {pid} for the process id (OTEL_CB_ADMIN_ADDRESS; default off)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Optional for argparse, so that a missing command gets our one-line usage error, not "required: command, args".
    parser.add_argument("command", nargs="?", help="the program to run, e.g. python, uvicorn")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (optional)")
    return parser


_USAGE = "usage: otel-cb-instrument [options] COMMAND [ARGS...], e.g. otel-cb-instrument python app.py"
_EXPORTER_OPTIONS = {"OTEL_TRACES_EXPORTER": "--traces-exporter", "OTEL_METRICS_EXPORTER": "--metrics-exporter"}


def _telemetry_problem(options: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """What the telemetry set-up would refuse (exporter names, OTLP protocols), as a one-line error, or None.

    The telemetry module's own checks are run on the environment the
    application will get, so the two can never disagree; the error names the
    option when the value came from one.
    """
    names = {variable: getattr(options, _ENV_OPTION_OF[variable]) for variable in _EXPORTER_OPTIONS}
    candidate = {**env, **{variable: value for variable, value in names.items() if value is not None}}
    if candidate.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not any(key.startswith(("OTEL_TRACES_", "OTEL_METRICS_", "OTEL_LOGS_", "OTEL_EXPORTER_OTLP"))
               for key in candidate):
        return None  # nothing set: the defaults are valid, and the SDK need not be imported to know it
    try:
        from .telemetry._configure import _METRICS_EXPORTERS, _TRACES_EXPORTERS, _choices, _protocol
    except ModuleNotFoundError:
        return None  # no OpenTelemetry SDK: telemetry is not set up, so nothing is wrong with its settings
    try:
        _choices(candidate, "OTEL_TRACES_EXPORTER", _TRACES_EXPORTERS)
        _choices(candidate, "OTEL_METRICS_EXPORTER", _METRICS_EXPORTERS)
        # OTEL_LOGS_EXPORTER takes what OTEL_TRACES_EXPORTER does (otlp, console, none).
        _choices(candidate, "OTEL_LOGS_EXPORTER", _TRACES_EXPORTERS)
        _protocol(candidate, "TRACES")
        _protocol(candidate, "METRICS")
    except ValueError as exc:
        message = str(exc)
        variable = message.partition(":")[0]
        if names.get(variable) is not None:
            message = _EXPORTER_OPTIONS[variable] + message[len(variable):]
        return message
    return None


def _disable_problem(options: argparse.Namespace) -> str | None:
    """An unknown name in ``--disable`` as a one-line error; None when all are known.

    Only the option is checked: ``OTEL_CB_DISABLED`` is often set once for
    environments that do not all have the same plugins installed.
    """
    label = "--disable"
    names = [n.strip() for n in (options.disable or "").split(",") if n.strip()]
    if not names:
        return None
    from ._plugins import _entry_points

    known = sorted({ep.name for ep in _entry_points()})
    for name in names:
        if name not in known:
            guess = did_you_mean(name, known)
            hint = f"did you mean {guess}? " if guess else ""
            return f"{label}: {shown(name)} is not an integration or plugin; {hint}known: {', '.join(known) or 'none'}"
    return None


def instrument_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``otel-cb-instrument``; returns only on error (else it execs the command)."""
    parser = _instrument_parser()
    options = parser.parse_args(argv)
    if options.command is None:
        return _fail(f"no command given; {_USAGE} (see --help)")
    env = os.environ
    problem = _telemetry_problem(options, env) or _disable_problem(options)
    if problem is not None:
        return _fail(problem)
    if options.config is not None:
        from ._settings import ConfigError, find_source

        try:
            # Named as given (--config), not as the variable it is passed on in.
            find_source(options.config, label="--config")
        except ConfigError as exc:
            return _fail(str(exc.problems[0]))
    for option, variable in _ENV_OPTIONS.items():
        value = getattr(options, option)
        if value is not None:
            env[variable] = value
    if env.get("OTEL_CB_ADMIN_ADDRESS"):
        from .admin._address import parse_address

        try:
            parse_address(env["OTEL_CB_ADMIN_ADDRESS"])
        except ValueError as exc:
            label = "--admin-address" if options.admin_address is not None else "OTEL_CB_ADMIN_ADDRESS"
            return _fail(str(exc).replace("admin address", label, 1))
    if env.get("OTEL_CB_CONFIG"):
        # Absolute, so child processes started in another directory read the same file.
        env["OTEL_CB_CONFIG"] = os.path.abspath(env["OTEL_CB_CONFIG"])

    from ._settings import ConfigError, load

    try:
        # Checked, not imported: the application's modules are imported by the application.
        settings = load(import_modules=False)
    except ConfigError as exc:
        return _fail(f"{exc}; run `otel-cb config check {shlex.quote(exc.source)}` for every error")
    if settings.source != "defaults":
        # The file found here, pinned: a child process started in another directory reads the same one.
        env["OTEL_CB_CONFIG"] = settings.source
    executable = shutil.which(options.command)
    if executable is None:
        return _fail(f"command not found: {options.command}")

    from ._bootstrap import ACTIVE_ENV, BOOTSTRAP_DIR

    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    # Like opentelemetry-instrument: the current directory, so console scripts
    # (uvicorn app:app) import the app as `python app.py` would.
    cwd = os.getcwd()
    if cwd not in paths:
        paths.insert(0, cwd)
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *paths])
    env[ACTIVE_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(executable, [executable, *options.args])
    except OSError as exc:
        return _fail(f"cannot run {options.command}: {exc.strerror or exc}")
    return 0  # pragma: no cover - execv does not return


def _fail(message: str, prog: str = "otel-cb-instrument") -> int:
    line = " ".join(mask(message).splitlines())
    print(f"{prog}: {line if len(line) <= 1000 else line[:997] + '...'}", file=sys.stderr)
    return EXIT_USAGE


def _main_parser() -> _Parser:
    parser = _Parser(prog="otel-cb", description="otel-cb tools")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    plugins = commands.add_parser("plugins", help="list every plugin of the otel_cb entry-point group")
    plugins.add_argument("--disable", metavar="NAME[,NAME...]", help="as otel-cb-instrument (OTEL_CB_DISABLED)")
    plugins.set_defaults(run=_plugins)
    config = commands.add_parser("config", help="config file tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    check = config_commands.add_parser("check", help="validate a config file and print every error")
    check.add_argument("path", metavar="PATH")
    check.set_defaults(run=_config_check)
    from .admin._commands import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``otel-cb``: each subcommand's parser names the function that runs it (``run``)."""
    options = _main_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = options.run
    return run(options)


def _plugins(options: argparse.Namespace) -> int:
    import logging

    from . import _plugins

    problem = _disable_problem(options)
    if problem is not None:
        return _fail(problem, "otel-cb plugins")
    # The table says why a plugin failed; the warnings would repeat it.
    logging.getLogger("otel_cb").setLevel(logging.ERROR)
    value = options.disable if options.disable is not None else os.environ.get("OTEL_CB_DISABLED", "")
    infos = _plugins.discover(None, {n.strip() for n in value.split(",") if n.strip()})
    print(mask(_plugins.format_plugins(infos)))
    return 0


def _config_check(options: argparse.Namespace) -> int:
    from ._settings import ConfigError, load

    path: str = options.path
    try:
        # Nothing the config names is imported: checking a file runs none of its modules' code.
        settings = load(path, import_modules=False, label="otel-cb config check")
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"otel-cb: {mask(path)}: {len(exc.problems)} error(s)", file=sys.stderr)
        return EXIT_USAGE
    shown_names = [section.name for section in settings.breakers[:20]]
    more = f", and {len(settings.breakers) - 20} more" if len(settings.breakers) > 20 else ""
    names = (", ".join(shown_names) or "none") + more
    print(f"{mask(path)}: OK ({len(settings.breakers)} breaker(s): {names})")
    return 0
