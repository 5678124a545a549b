"""ruff and mypy are part of the suite, so the README's one test command covers them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run("mypy", "otel_cb", "plugins/otel_cb_services")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_otel_cb_imports_nothing_heavy() -> None:
    code = (
        "import sys, otel_cb\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'grpc', 'asyncpg', 'redis', 'wrapt', 'pluggy', 'yaml') or m.startswith('opentelemetry.sdk')]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
