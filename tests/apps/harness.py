"""Helpers of the subprocess tests: install the test plugin distribution, run otel-cb-instrument."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["APPS", "BIN", "ROOT", "base_env", "plugin_site", "run"]

APPS = Path(__file__).resolve().parent
ROOT = APPS.parent.parent
BIN = Path(sys.executable).parent
_lock = threading.Lock()
_site: Path | None = None


def plugin_site(tmp_root: Path) -> Path:
    """Install tests/plugin_dist with pip into a directory of its own (once per session) and return it.

    A directory of its own, not the shared venv, so that the deliberately
    broken plugins it contains never show up in anybody else's runs.
    """
    global _site
    with _lock:
        if _site is None:
            source = tmp_root / "plugin_dist_src"
            shutil.copytree(APPS.parent / "plugin_dist", source)
            target = tmp_root / "plugin_site"
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                 "--disable-pip-version-check", "--no-index", "--target", str(target), str(source)],
                check=True, capture_output=True, text=True, timeout=120,
            )
            _site = target
        return _site


def base_env(*pythonpath: Path | str, **extra: str) -> dict[str, str]:
    """The environment of a test run: no inherited OTEL_* settings, no exporters, loopback only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    # The service plugins (plugins/, installed beside otel-cb) are tested on their own
    # (tests/test_services.py); these apps exercise the engine with only the integrations.
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
               OTEL_CB_DISABLED="sentinel,shield,edge_agent,db",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    if "OTEL_CB_DISABLED" in extra:
        extra = {**extra, "OTEL_CB_DISABLED": f"{extra['OTEL_CB_DISABLED']},{env['OTEL_CB_DISABLED']}"}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str], cwd: Path = APPS, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command (``otel-cb-instrument`` etc. are found on the venv's bin directory)."""
    return subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
