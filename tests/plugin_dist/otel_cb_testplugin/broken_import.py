"""A plugin that fails to import: otel-cb must log it once and carry on."""

raise ImportError("otel_cb_testplugin.broken_import is broken on purpose")
