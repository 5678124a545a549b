"""``python -m otel_cb_services.demo``."""

from .app import main

raise SystemExit(main())
