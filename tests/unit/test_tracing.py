"""taskq.tracing without OpenTelemetry installed: every helper is a no-op."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import ROOT

WITHOUT_OTEL = textwrap.dedent("""
    import sys
    sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
    from taskq import tracing
    with tracing.span("x") as a, tracing.continued("y", {"traceparent": "00-1-2-01"}) as b:
        pass
    print(tracing.enabled(), tracing.carrier(), a, b, tracing.request_parent({}))
    import worker.runner, worker.webhooks, app.tasks  # they import without it
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]))
""")


def test_without_opentelemetry_tracing_does_nothing() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_OTEL], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["False None None None None", "[]"]
