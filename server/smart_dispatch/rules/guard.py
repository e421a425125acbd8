"""Trying a candidate ruleset in a child process with a time and memory budget, before the
serving process builds it.

durable-rules spins forever inside C, holding the GIL, on some rulesets over its limits
(network.py lists the ones we know); a YAML file can be made to expand without bound. Either
would stop a serving process dead: no Health answer, no signal handled. So every load first
sends the rule-file texts to `python -m smart_dispatch.rules.guard`, which parses, validates,
compiles and evaluates them under `RLIMIT_AS` and `RLIMIT_CPU`, and is killed when the wall-clock
budget runs out. Only a ruleset that passed is built in the serving process, from the very
same texts (the work is deterministic, so it costs there what it cost in the child).

A process remembers the rule-file sets that passed (with the budget they passed under), so
building the same content again, e.g. a second sidecar in one process or a restart of the
server object, does not start another child.

The child is told this process's custom channels (`domain.custom_channels`, from the providers
file) in SD_GUARD_CHANNELS, so that rules naming them pass there as they do here; they are part
of what a remembered pass was tried with.

The child answers one JSON line on stdout: `{"ok": true, "rules": …, "caps": …, "shards": …}`
or `{"ok": false, "file": …, "line": …, "problem": …}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smart_dispatch.domain import custom_channels, set_custom_channels
from smart_dispatch.errors import RuleFileError

_COMMAND = (sys.executable, "-m", "smart_dispatch.rules.guard")


@dataclass(frozen=True, slots=True)
class CompileBudget:
    """What trying one ruleset may cost: wall-clock seconds and address space in MiB."""

    timeout_s: float = 30.0
    memory_mb: int = 1024


@dataclass(frozen=True, slots=True)
class CheckReport:
    rules: int
    caps: int
    shards: int


_PASSED: dict[tuple[str, CompileBudget], CheckReport] = {}
_PASSED_KEPT = 64


def _passed_key(sources: Mapping[str, str], budget: CompileBudget) -> tuple[str, CompileBudget]:
    digest = hashlib.sha256(",".join(custom_channels()).encode() + b"\0")  # rules may name them
    for file, text in sources.items():
        digest.update(file.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest(), budget


def _remember(key: tuple[str, CompileBudget], report: CheckReport) -> CheckReport:
    if len(_PASSED) >= _PASSED_KEPT:
        del _PASSED[next(iter(_PASSED))]
    _PASSED[key] = report
    return report


def check_sources(sources: Mapping[str, str], budget: CompileBudget, where: str) -> CheckReport:
    """Try `sources` (`{file: text}`) in a child; raises `RuleFileError` naming the file and
    line, or `where` when the budget ran out. Ctrl-C kills the child."""
    key = _passed_key(sources, budget)
    if key in _PASSED:
        return _PASSED[key]
    try:
        done = subprocess.run(
            _COMMAND,
            input=json.dumps(sources).encode(),
            capture_output=True,
            timeout=budget.timeout_s,
            env=_child_env(budget),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _timeout(budget, where) from exc
    return _remember(key, _report(done.returncode, done.stdout, done.stderr, budget, where))


async def check_sources_async(sources: Mapping[str, str], budget: CompileBudget, where: str) -> CheckReport:
    """`check_sources` without blocking the event loop; cancelling it kills the child."""
    key = _passed_key(sources, budget)
    if key in _PASSED:
        return _PASSED[key]
    child = await asyncio.create_subprocess_exec(
        *_COMMAND,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_env(budget),
    )
    try:
        async with asyncio.timeout(budget.timeout_s):
            stdout, stderr = await child.communicate(json.dumps(sources).encode())
    except TimeoutError as exc:
        raise _timeout(budget, where) from exc
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode is not None
    return _remember(key, _report(child.returncode, stdout, stderr, budget, where))


def _child_env(budget: CompileBudget) -> dict[str, str]:
    return {
        **os.environ,
        "SD_GUARD_MEMORY_MB": str(budget.memory_mb),
        "SD_GUARD_CPU_S": str(budget.timeout_s),
        "SD_GUARD_CHANNELS": ",".join(custom_channels()),  # the providers file's custom channels
    }


def _timeout(budget: CompileBudget, where: str) -> RuleFileError:
    return RuleFileError(
        where,
        0,
        f"compiling the rules did not finish within {budget.timeout_s:g} s (SD_RULES_COMPILE_TIMEOUT_S); "
        "the ruleset is too large or hits a rules-engine trap",
    )


def _report(returncode: int, stdout: bytes, stderr: bytes, budget: CompileBudget, where: str) -> CheckReport:
    try:
        answer = json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        if returncode < 0 and -returncode in (signal.SIGXCPU, signal.SIGKILL):
            problem = f"compiling the rules used more than {budget.timeout_s:g} s of CPU"
        elif returncode < 0:
            problem = f"the rules compiler died with signal {-returncode}"
        else:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            problem = f"the rules compiler failed (exit {returncode}): {tail[0][:200]}"
        raise RuleFileError(where, 0, problem) from None
    if not answer.get("ok"):
        raise RuleFileError(answer.get("file") or where, int(answer.get("line", 0)), str(answer["problem"]))
    return CheckReport(int(answer["rules"]), int(answer["caps"]), int(answer["shards"]))


def _limit_self() -> None:
    memory = int(os.environ.get("SD_GUARD_MEMORY_MB", "1024")) * 1024 * 1024
    cpu = max(1, int(float(os.environ.get("SD_GUARD_CPU_S", "30")) + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _try(sources: Mapping[str, str]) -> dict[str, Any]:
    from smart_dispatch.rules.active import compile_ruleset
    from smart_dispatch.rules.loader import parse_ruleset

    ruleset = parse_ruleset(sources)
    compiled = compile_ruleset(ruleset).compiled
    try:
        compiled.matches({})  # every shard evaluates once: an evaluation trap shows here
        return {"ok": True, "rules": len(ruleset.rules), "caps": len(ruleset.caps), "shards": compiled.shards}
    finally:
        compiled.close()


def main() -> int:
    _limit_self()
    try:
        set_custom_channels(filter(None, os.environ.get("SD_GUARD_CHANNELS", "").split(",")))
        sources = json.loads(sys.stdin.buffer.read())
        answer = _try(sources)
    except RuleFileError as exc:
        answer = {"ok": False, "file": exc.file, "line": exc.line, "problem": exc.problem}
    except MemoryError:
        budget = os.environ.get("SD_GUARD_MEMORY_MB", "1024")
        answer = {
            "ok": False,
            "problem": f"compiling the rules needs more than {budget} MiB (SD_RULES_COMPILE_MEMORY_MB)",
        }
    except RecursionError:
        answer = {"ok": False, "problem": "the rules nest too deeply to compile"}
    except Exception as exc:  # the engine's own refusal, reported like any other problem
        answer = {"ok": False, "problem": f"{type(exc).__name__}: {str(exc)[:500]}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
