"""The user's own sitecustomize: it must still run under otel-cb-instrument."""

import sys

sys.stderr.write("USER SITECUSTOMIZE RAN\n")
import builtins  # noqa: E402

builtins.USER_SITECUSTOMIZE = True  # type: ignore[attr-defined]
