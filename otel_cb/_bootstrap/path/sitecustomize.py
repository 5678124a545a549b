"""otel-cb bootstrap, first on PYTHONPATH under ``otel-cb-instrument``: see ``otel_cb._bootstrap``."""


def _run() -> None:
    try:
        from otel_cb._bootstrap import boot
    except Exception:  # otel-cb is not importable by this interpreter: run the app as is
        return
    boot()


_run()
