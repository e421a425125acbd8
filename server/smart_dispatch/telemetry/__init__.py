"""OpenTelemetry tracing and metrics, and the decision log (see DESIGN.md, Observability).

Build one `Telemetry` in the composition root (`Telemetry.from_settings`) and pass it down;
everything defaults to `Telemetry.noop()`.
"""

from smart_dispatch.telemetry.base import TelemetryHooks
from smart_dispatch.telemetry.core import Telemetry

__all__ = ["Telemetry", "TelemetryHooks"]
