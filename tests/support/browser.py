"""A real headless browser for the console tests: Debian's Chromium driven by Playwright.

Playwright never downloads a browser here: it is pointed at the `chromium` executable that
`apt-get install chromium` provides (the Makefile's test target and .ci/run install it).
Without it (or without the playwright package) the browser tests skip locally with the reason,
and FAIL under CI=true.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

INSTALL_HINT = "apt-get install chromium (and pip install -e '.[dev]' for playwright)"


def chromium_executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """The Chromium executable; skip locally, FAIL under CI=true, when it or Playwright is
    missing."""
    import pytest

    executable = chromium_executable()
    missing = []
    if executable is None:
        missing.append("no chromium executable on PATH")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package is not installed")
    if not missing:
        assert executable is not None
        return executable
    reason = f"{' and '.join(missing)}: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)
