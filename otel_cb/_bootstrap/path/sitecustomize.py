"""otel-cb bootstrap, first on PYTHONPATH under ``otel-cb-instrument``: see ``otel_cb._bootstrap``."""

import os
import sys

_MISSING_SHOWN = "OTEL_CB_MISSING_SHOWN"


def _run() -> None:
    try:
        from otel_cb._bootstrap import boot
    except Exception as exc:  # otel-cb is not importable by this interpreter: run the app as is, and say so once
        if os.environ.get(_MISSING_SHOWN) != "1":
            os.environ[_MISSING_SHOWN] = "1"  # inherited: the application's child processes stay quiet
            missing = isinstance(exc, ImportError) and (exc.name or "").partition(".")[0] == "otel_cb"
            why = "otel-cb is not installed for" if missing else f"otel-cb cannot be imported ({exc!r}) by"
            sys.stderr.write(f"otel-cb: {why} this Python ({sys.executable}); nothing is protected by circuit "
                             "breakers (run the Python of the environment otel-cb is installed in)\n")
        return
    boot()


_run()
