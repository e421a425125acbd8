"""`smart-dispatch serve | rules check` — the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from smart_dispatch.config import settings_from_env
from smart_dispatch.errors import SmartDispatchError
from smart_dispatch.malloc_tuning import pin_malloc_thresholds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smart-dispatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC sidecar (with in-process senders)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, env SD_HOST)")
    serve.add_argument("--port", type=int, help="port, 0 for any free one (default 50051, env SD_PORT)")
    serve.add_argument("--rules", type=Path, dest="rules_dir", help="rules directory (default rules/)")
    serve.add_argument(
        "--store", dest="store_url", help="memory:// (default), redis://, rediss://, redis+cluster://"
    )
    serve.add_argument("--log-level", dest="log_level", help="DEBUG, INFO (default), WARNING")
    serve.add_argument(
        "--shadow", action="store_const", const=True, help="evaluate and report every rule, enforce none"
    )
    worker = sub.add_parser("worker", help="run only a sender pool on a shared (Redis) store")
    for command in (serve, worker):
        command.add_argument("--senders", type=int, help="concurrent senders in this process (default 8)")
        command.add_argument("--providers", type=Path, dest="providers_file", help="providers file (YAML)")
        command.add_argument("--templates", type=Path, dest="templates_dir", help="template directory")
    worker.add_argument("--rules", type=Path, dest="rules_dir", help="rules directory (default rules/)")
    worker.add_argument("--store", dest="store_url", help="redis://, rediss:// or redis+cluster://")
    worker.add_argument("--log-level", dest="log_level", help="DEBUG, INFO (default), WARNING")

    rules = sub.add_parser("rules", help="work with rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate a rules directory; exit 1 on problems")
    check.add_argument("directory", type=Path)
    test = rules_sub.add_parser("test", help="run the rule test cases; exit 1 when any fails")
    test.add_argument("directory", type=Path)
    test.add_argument("--tests", type=Path, help="test case directory (default: DIRECTORY/tests)")
    test.add_argument(
        "--require-coverage", action="store_true", help="also fail when a rule is exercised by no case"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("serve", "worker"):
            return _run(args)
        if args.rules_command == "test":
            return _rules_test(args.directory, args.tests, args.require_coverage)
        return _rules_check(args.directory)
    except SmartDispatchError as exc:
        print(f"smart-dispatch: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    pin_malloc_thresholds()
    settings = settings_from_env().with_overrides(
        **{
            name: getattr(args, name, None)
            for name in (
                "host",
                "port",
                "rules_dir",
                "store_url",
                "log_level",
                "shadow",
                "senders",
                "providers_file",
                "templates_dir",
            )
        }
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "worker":
        from smart_dispatch.worker import run_worker

        asyncio.run(run_worker(settings))
    else:
        from smart_dispatch.app import App

        asyncio.run(App(settings).run_until_signal())
    return 0


def _rules_check(directory: Path) -> int:
    from smart_dispatch.rules.active import compile_ruleset
    from smart_dispatch.rules.loader import load_ruleset

    version = compile_ruleset(load_ruleset(directory))
    ruleset = version.ruleset
    version.compiled.close()
    counts = f"{len(ruleset.rules)} rules, {len(ruleset.caps)} caps in {len(ruleset.files)} files"
    print(f"ok: {counts}; version {ruleset.version}")
    return 0


def _rules_test(directory: Path, tests: Path | None, require_coverage: bool) -> int:
    from smart_dispatch.rules.testing import run_rule_tests

    report = asyncio.run(run_rule_tests(directory, tests))
    print(report.render())
    if report.failed:
        return 1
    return 1 if require_coverage and report.uncovered else 0


if __name__ == "__main__":
    sys.exit(main())
