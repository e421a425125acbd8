"""matplotlib for the reports (simulate, stats, replay): the optional `[sim]` extra, headless."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


def save(plt: Any, figure: Any, path: Path, title: str) -> Path:
    """Title `figure`, lay it out, write it to `path` as a PNG and free it."""
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 0) -> list[str]:
    """Aligned lines of a table for a terminal: the first `left` columns left-aligned, the
    others right-aligned (numbers)."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), *(line(row) for row in rows)]
