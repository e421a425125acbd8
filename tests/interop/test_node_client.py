"""Cross-language check: a Node.js client (@grpc/grpc-js + @grpc/proto-loader, loading proto/ at
run time) calls health, Decide, Dispatch and GetDispatch on a real `smart-dispatch serve`.

Needs `node` (>= 18) and `npm`: skipped locally when either is missing, a failure under CI=true.
The npm packages are installed once into tests/interop/node/node_modules (git-ignored) with
`npm ci` from the committed lock file, and reused by later runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.sidecar import ROOT, sidecar

NODE_DIR = Path(__file__).resolve().parent / "node"
CLIENT = NODE_DIR / "client.mjs"
EXPECTED_CHECKS = 5  # the checks client.mjs runs; a dropped check must not pass silently
MIN_NODE_MAJOR = 18
NPM_TIMEOUT_S = 240.0
CLIENT_TIMEOUT_S = 60.0
SUMMARY = re.compile(r"^node interop: (\d+) passed, (\d+) failed$")


def _unavailable(reason: str) -> None:
    """Skip locally, FAIL under CI=true (the interop test must run in CI)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node / npm not found on PATH (install Node.js >= 18)")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"v(\d+)\.", version.strip())
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        _unavailable(f"node {version.strip() or '?'} is older than v{MIN_NODE_MAJOR}")
    return node, npm


def _install_needed() -> bool:
    """node_modules is missing, or older than the lock file it was installed from."""
    marker = NODE_DIR / "node_modules" / ".package-lock.json"  # written by npm ci / npm install
    lock = NODE_DIR / "package-lock.json"
    if not marker.exists():
        return True
    return lock.exists() and lock.stat().st_mtime > marker.stat().st_mtime


@pytest.fixture(scope="session")
def node_client() -> str:
    """The `node` binary, with the client's npm packages installed (once, cached)."""
    node, npm = _node_tools()
    if _install_needed():
        has_lock = (NODE_DIR / "package-lock.json").exists()
        # --ignore-scripts: nothing needs an install script (protobufjs' postinstall only
        # checks its optional CLI); installs stay reproducible from the lock file.
        command = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund", "--ignore-scripts"]
        try:
            result = subprocess.run(
                command, cwd=NODE_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(command[1:])} did not finish in {NPM_TIMEOUT_S:.0f} s")
        if result.returncode != 0:
            pytest.fail(f"`npm {command[1]}` failed in {NODE_DIR}:\n{result.stdout}\n{result.stderr}")
    return node


@pytest.mark.timeout(NPM_TIMEOUT_S + CLIENT_TIMEOUT_S + 60)
def test_node_client_against_a_running_sidecar(node_client: str) -> None:
    # No providers file: every channel is the stub provider, which delivers at once. Blank
    # values neutralise a developer's own SD_* settings that would change the expected plans.
    env = {"SD_PROVIDERS": "", "SD_TEMPLATES": "", "SD_SHADOW": "", "SD_ALLOW_LIST": "", "SD_DENY_LIST": ""}
    with sidecar("--rules", str(ROOT / "rules"), "--store", "memory://", env=env) as server:
        try:
            result = subprocess.run(
                [node_client, str(CLIENT), server.address],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=CLIENT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"node client did not finish in {CLIENT_TIMEOUT_S:.0f} s:\n{exc.stdout}\n{exc.stderr}"
            )
        assert server.process.poll() is None, "the sidecar exited while the node client ran"

    output = f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, output
    assert lines, output
    summary = SUMMARY.match(lines[-1])
    assert summary is not None, output
    assert (int(summary[1]), int(summary[2])) == (EXPECTED_CHECKS, 0), output
    assert sum(line.startswith("ok - ") for line in lines) == EXPECTED_CHECKS, output
