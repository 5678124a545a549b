"""The otel-cb demo: an incident manager whose dependencies fail on a script.

Run it under the instrumentation: ``otel-cb-instrument python -m otel_cb_services.demo``.
"""

__all__: list[str] = []
