"""OpenTelemetry tracing and metrics, the decision log file and the admin HTTP port
(docs/architecture.md, "Layers"; the decision log in the store: decisionlog/).

Build one `Telemetry` in the composition root (`Telemetry.from_settings`) and pass it down;
everything defaults to `Telemetry.noop()`.
"""

from smart_dispatch.telemetry.base import TelemetryHooks
from smart_dispatch.telemetry.core import Telemetry

__all__ = ["Telemetry", "TelemetryHooks"]
