"""The benchmark scripts run: `python -m benchmarks.run --quick` prints every section's table.

One run per section (``--only``), so a broken section is named and does not
hide the others.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = sorted(path.stem for path in (ROOT / "benchmarks").glob("bench_*.py"))


@functools.cache
def quick_run(section: str) -> str:
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--only", section], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# otel-cb benchmarks") and "quick mode" in result.stdout
    return result.stdout


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_prints_its_table(section: str) -> None:
    report = quick_run(section)
    title = importlib.import_module(f"benchmarks.{section}").TITLE
    table = report.split(f"## {title}\n", 1)[1]
    assert "\n|---" in table, report


def test_core_section_compares_every_library_against_the_targets() -> None:
    report = quick_run("bench_core")
    for library in ("otel-cb", "pybreaker", "circuitbreaker", "purgatory", "aiobreaker", "interlock-cb"):
        assert f"\n| {library} | " in report, library
    for target in ("sync overhead <= circuitbreaker's", "async overhead <= 1/2 of aiobreaker's",
                   "rejection <= 1/3 of pybreaker's", "memory per idle breaker <= 2 KiB"):
        assert f"\n| {target} | " in report, target
