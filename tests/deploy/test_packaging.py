"""What a wheel (and so the Docker image) ships: every file the package reads at run time.

An editable install reads the source tree, so a data file the package-data globs miss only
fails in a real install; this compares the globs with the tree instead of building a wheel.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "server" / "smart_dispatch"
SOURCE_SUFFIXES = {".py", ".pyc"}


def test_every_data_file_of_the_package_is_in_its_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["smart_dispatch"]
    shipped = {path for pattern in globs for path in PACKAGE.glob(pattern)}
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in SOURCE_SUFFIXES and "__pycache__" not in path.parts
    }

    assert any(path.suffix == ".lua" for path in data)  # the scripts the Redis stores load
    missing = sorted(str(path.relative_to(PACKAGE)) for path in data - shipped)
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"
