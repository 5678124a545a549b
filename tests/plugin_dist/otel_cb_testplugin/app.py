"""The console script ``cbtest-app``: runs tests/apps/app_basic.py's main from the current directory."""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    from app_basic import main as run_app  # found through the current directory, as `uvicorn app:app` finds app

    run_app()
