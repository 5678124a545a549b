"""An application that knows nothing of otel-cb: it calls a failing host eight times."""

from __future__ import annotations

import sys


def main() -> None:
    import fakeclient

    client = fakeclient.Client()
    outcomes = []
    for _ in range(8):
        try:
            client.call("down.example", fail=True)
        except ConnectionError:
            outcomes.append("failure")
        except Exception as exc:  # CircuitOpenError when otel-cb protects the call
            outcomes.append(type(exc).__name__)
    print("OUTCOMES", " ".join(outcomes))
    print("OK", client.call("up.example"))
    if "otel_cb" in sys.modules:
        import otel_cb

        print("BREAKERS", sorted(b.name for b in otel_cb.registry))


if __name__ == "__main__":
    main()
