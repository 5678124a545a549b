"""Run every benchmark section in one process and one run, and print one markdown report.

Each ``benchmarks/bench_*.py`` module defines ``TITLE: str`` and
``run(quick: bool) -> str`` returning a markdown table (ratios beside absolute
figures, otel-cb beside the competitors measured in the same run). ``--quick``
runs each section for a moment only, to prove the scripts work (the test
suite does this); the README quotes a full run.

Usage: python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--output PATH]
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sections() -> list[str]:
    return sorted(path.stem for path in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a moment per section, to check the scripts run")
    parser.add_argument("--only", default="", help="comma-separated section names (bench_core, ...)")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    wanted = [name for name in args.only.split(",") if name] or sections()
    parts = [
        "# otel-cb benchmarks",
        f"Python {platform.python_version()} on {platform.machine()}, {time.strftime('%Y-%m-%d')}"
        f"{' (quick mode: figures are not meaningful)' if args.quick else ''}.",
    ]
    for name in wanted:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        parts.append(f"## {module.TITLE}\n\n{module.run(args.quick).strip()}")
    report = "\n\n".join(parts) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
