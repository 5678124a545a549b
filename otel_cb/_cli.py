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
import shutil
import sys
from collections.abc import Sequence

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
    parser.add_argument("command", help="the program to run, e.g. python, uvicorn")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return parser


def instrument_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``otel-cb-instrument``; returns only on error (else it execs the command)."""
    parser = _instrument_parser()
    options = parser.parse_args(argv)
    env = os.environ
    for option, variable in _ENV_OPTIONS.items():
        value = getattr(options, option)
        if value is not None:
            env[variable] = value
    if env.get("OTEL_CB_ADMIN_ADDRESS"):
        from .admin._address import parse_address

        try:
            parse_address(env["OTEL_CB_ADMIN_ADDRESS"])
        except ValueError as exc:
            return _fail(str(exc))
    if env.get("OTEL_CB_CONFIG"):
        # Absolute, so child processes started in another directory read the same file.
        env["OTEL_CB_CONFIG"] = os.path.abspath(env["OTEL_CB_CONFIG"])

    from ._settings import ConfigError, load

    try:
        settings = load()
    except ConfigError as exc:
        return _fail(f"{exc}; run `otel-cb config check {exc.source}` for every error")
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
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _main_parser() -> _Parser:
    parser = _Parser(prog="otel-cb", description="otel-cb tools")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    plugins = commands.add_parser("plugins", help="list every plugin of the otel_cb entry-point group")
    plugins.add_argument("--disable", metavar="NAME[,NAME...]", help="as otel-cb-instrument (OTEL_CB_DISABLED)")
    config = commands.add_parser("config", help="config file tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    check = config_commands.add_parser("check", help="validate a config file and print every error")
    check.add_argument("path", metavar="PATH")
    from .admin._commands import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``otel-cb``."""
    options = _main_parser().parse_args(argv)
    if options.command == "plugins":
        return _plugins(options.disable)
    from .admin._commands import COMMANDS, run

    if options.command in COMMANDS:
        return run(options)
    return _config_check(options.path)


def _plugins(disable: str | None) -> int:
    import logging

    from . import _plugins
    from ._instrument import disabled_from_env

    # The table says why a plugin failed; the warnings would repeat it.
    logging.getLogger("otel_cb").setLevel(logging.ERROR)
    disabled = disabled_from_env() if disable is None else {n.strip() for n in disable.split(",") if n.strip()}
    print(_plugins.format_plugins(_plugins.discover(None, disabled)))
    return 0


def _config_check(path: str) -> int:
    from ._settings import ConfigError, load

    try:
        settings = load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"otel-cb: {path}: {len(exc.problems)} error(s)", file=sys.stderr)
        return EXIT_USAGE
    names = ", ".join(section.name for section in settings.breakers) or "none"
    print(f"{path}: OK ({len(settings.breakers)} breaker(s): {names})")
    return 0
