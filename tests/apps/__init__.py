"""Small real applications that the subprocess tests run under otel-cb-instrument."""
