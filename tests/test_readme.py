"""Every shell and Python block of README.md runs as written, after the quick start.

Blocks are read with a Markdown parser (markdown-it-py, which ``rich`` brings
along). The Python blocks of one section run in order in one interpreter, as a
reader would paste them, in a scratch directory; shell blocks run with bash from
the repository root, where the quick start made ``.venv``. A block runs unless
``EXCLUDED`` names it (by section and first line) with the reason; an exclusion that no
longer matches a block fails, so the list stays true.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL = ("bash", "sh", "shell", "console")

# (section, first line of the block) -> why it does not run here.
EXCLUDED = {
    ("Quick start", "python3 -m venv .venv && .venv/bin/pip install -e '.[all]' -e plugins && "
                    ".venv/bin/otel-cb-instrument .venv/bin/otel-cb-demo"):
        "installs into .venv (a minute, the package index); the demo it starts is run by tests/test_demo.py",
    ("Quick start", "bash scripts/test"): "runs this suite (recursion)",
    ("Tests", "bash scripts/test"): "runs this suite (recursion)",
    ("otel-cb-instrument", "otel-cb-instrument --config otel-cb.yaml --service-name incidents python app.py"):
        "runs the reader's own app.py, mypkg and app:app (tests/test_instrument.py and test_cli.py cover the command)",
    ("otel-cb-instrument", "import otel_cb"): "my_plugin is the reader's own plugin (tests/test_instrument.py)",
    # Blocks that need a service, or an object of the reader's.
    ("asyncpg", "from otel_cb import CircuitBreaker, CircuitBreakerConfig"): "needs PostgreSQL at db:5432",
    ("Service plugins and the demo", "from otel_cb_services.clients import EdgeAgentClient, SentinelClient, "
                                     "ShieldClient"):
        "needs Sentinel, Shield and EdgeAgent at sentinel:8080, shield:50051, edge:50052",
    ("Shared state across processes (Redis)", "from otel_cb import CircuitBreaker"):
        "needs Redis at 127.0.0.1:6379 (and would write to a shared one)",
    ("requests", "import requests"): "needs a server at catalog:8080 (tests/test_requests.py runs the same calls)",
    ("Operating breakers", "export OTEL_CB_ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64)"):
        "runs the whole demo for a minute; tests/test_admin_instrument.py runs an app with the endpoint on",
    ("Operating breakers", ".venv/bin/otel-cb status --address 127.0.0.1:9466"):
        "needs a running application with the endpoint on; tests/test_admin_instrument.py drives these commands",
    ("Contributing", ".venv/bin/python scripts/peer-suites"):
        "fetches and runs other projects' test suites (about 15 minutes)",
    ("Dashboards and alerts", "docker compose -f grafana/docker-compose.yml up -d"):
        "needs Docker and starts the Grafana stack",
}


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    text: str
    line: int

    @property
    def key(self) -> tuple[str, str]:
        return self.section, self.text.strip().splitlines()[0]


def blocks() -> list[Block]:
    """The README's shell and Python blocks, with the ``##`` section each is under."""
    found, section, heading = [], "", False
    for token in MarkdownIt("commonmark").parse(README.read_text()):
        if token.type == "heading_open":
            heading = token.tag == "h2"
        elif token.type == "inline" and heading:
            section, heading = token.content, False
        elif token.type == "fence" and token.info.strip() in (*SHELL, "python"):
            assert token.map is not None
            found.append(Block(section, "shell" if token.info.strip() in SHELL else "python", token.content,
                               token.map[0] + 1))
    return found


def _runnable(language: str) -> dict[str, list[Block]]:
    """Runnable blocks of one language, by section (Python blocks of a section share one interpreter)."""
    by_section: dict[str, list[Block]] = {}
    for block in blocks():
        if block.language == language and block.key not in EXCLUDED:
            by_section.setdefault(block.section, []).append(block)
    return by_section


def _environment() -> dict[str, str]:
    # No collector: telemetry set up by a block exports nowhere instead of retrying localhost.
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    env.pop("OTEL_CB_DISABLED", None)
    return env


def test_every_exclusion_names_one_block_of_the_readme() -> None:
    keys = [block.key for block in blocks()]
    assert {key: keys.count(key) for key in EXCLUDED} == dict.fromkeys(EXCLUDED, 1)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_names_one_of_its_headings() -> None:
    tokens = MarkdownIt("commonmark").parse(README.read_text())
    headings = {_slug(after.content) for before, after in itertools.pairwise(tokens)
                if before.type == "heading_open"}
    links = {child.attrs["href"] for token in tokens if token.type == "inline" for child in token.children or ()
             if child.type == "link_open" and str(child.attrs.get("href", "")).startswith("#")}
    assert links, "the README links to its own sections"
    assert sorted(link for link in links if str(link)[1:] not in headings) == []


def test_the_readme_has_blocks_to_run() -> None:
    assert _runnable("python") and _runnable("shell")


@pytest.mark.parametrize("section", sorted(_runnable("python")))
def test_python_blocks_run(section: str, tmp_path: Path) -> None:
    parts = _runnable("python")[section]
    source = "\n".join(f"# README.md line {block.line}\n{block.text}" for block in parts)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=_environment())
    assert result.returncode == 0, f"README section {section!r}:\n{source}\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("block", [b for blocks_ in _runnable("shell").values() for b in blocks_],
                         ids=lambda block: f"line{block.line}")
def test_shell_blocks_run(block: Block) -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.fail("no .venv at the repository root: run the quick start (or bash scripts/test) first")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], capture_output=True, text=True,
                            timeout=120, cwd=ROOT, env=_environment())
    assert result.returncode == 0, f"README line {block.line}:\n{block.text}\n{result.stdout}{result.stderr}"
