"""matplotlib for the reports (simulate, stats, replay): the optional `[sim]` extra, headless."""

from __future__ import annotations

from typing import Any

from smart_dispatch.errors import ConfigurationError


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend. Raises `ConfigurationError` when matplotlib is
    not installed (`pip install 'smart-dispatch[sim]'`)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigurationError("the plots need matplotlib: pip install 'smart-dispatch[sim]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
