"""pytest plugin of ``scripts/peer-suites``: writes every test's outcome to ``$PEER_SUITES_RESULTS`` as JSON.

Loaded with ``-p peer_suites_collect`` into another project's test run. A
test counts as failed when any of its phases failed (setup and teardown
errors included); the message is the crash line, for grouping failures by
cause. It also records whether otel-cb was instrumented in that process, so
that a run meant to be under the agent proves it was.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

__all__ = ["pytest_runtest_logreport", "pytest_sessionfinish"]

_RANK = {"passed": 0, "skipped": 1, "failed": 2}
_results: dict[str, dict[str, str]] = {}


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcome = report.outcome
    if report.when != "call" and outcome == "passed":
        return
    previous = _results.get(report.nodeid)
    if previous is None or _RANK[outcome] > _RANK[previous["outcome"]]:
        _results[report.nodeid] = {"outcome": outcome, "when": report.when,
                                   "message": _message(report) if outcome == "failed" else ""}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("PEER_SUITES_RESULTS")
    if not path:
        return
    plugins: Any = sys.modules.get("otel_cb._plugins")
    data = {"instrumented": plugins is not None and plugins.active() is not None,
            "exitstatus": int(exitstatus), "tests": _results}
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file)
