"""`smart-dispatch serve | worker | health | rules check | rules test | why | send | stats | replay |
simulate` — the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from smart_dispatch.config import settings_from_env
from smart_dispatch.errors import ConfigurationError, SmartDispatchError
from smart_dispatch.heap import pin_malloc_thresholds


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
    serve.add_argument(
        "--allow-request-clock",
        dest="allow_request_clock",
        action="store_const",
        const=True,
        help="let DecideRequest.at set the decision's clock (simulation, replay)",
    )
    worker = sub.add_parser("worker", help="run only a sender pool on a shared (Redis) store")
    serve.add_argument("--workers", type=int, help="sidecar processes sharing the port (needs a Redis store)")
    serve.add_argument("--tls-cert", type=Path, dest="tls_cert", help="server certificate (PEM): serve TLS")
    serve.add_argument("--tls-key", type=Path, dest="tls_key", help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, dest="tls_client_ca", help="require client certs (mTLS)")
    serve.add_argument("--auth-tokens", type=Path, dest="auth_tokens_file", help="bearer tokens file (YAML)")
    for command in (serve, worker):
        command.add_argument("--senders", type=int, help="concurrent senders in this process (default 8)")
        command.add_argument("--providers", type=Path, dest="providers_file", help="providers file (YAML)")
        command.add_argument("--templates", type=Path, dest="templates_dir", help="template directory")
        _telemetry_arguments(command)
    worker.add_argument("--rules", type=Path, dest="rules_dir", help="rules directory (default rules/)")
    worker.add_argument("--store", dest="store_url", help="redis://, rediss:// or redis+cluster://")
    worker.add_argument("--log-level", dest="log_level", help="DEBUG, INFO (default), WARNING")

    why = sub.add_parser("why", help="why did a message go (or not go) the way it did: from the decision log")
    why.add_argument("message_id")
    why.add_argument("--log", type=Path, help="decision log file (default: SD_AUDIT_LOG)")
    why.add_argument("--json", action="store_true", help="print the decision log record as JSON")

    bulk = sub.add_parser(
        "send", help="dispatch a campaign to an audience file (.jsonl or .csv) via DispatchBatch"
    )
    bulk.add_argument("--audience", type=Path, required=True, help="people, one per line (.jsonl or .csv)")
    bulk.add_argument("--category", required=True, help="the messages' category, e.g. marketing")
    bulk.add_argument("--template", default="", help="template name (see --templates of serve)")
    bulk.add_argument(
        "--campaign", default="", help="campaign id: message ids are <campaign>:<user_id> (resumable)"
    )
    bulk.add_argument(
        "--target", default="127.0.0.1:50051", help="the sidecar, host:port (default 127.0.0.1:50051)"
    )
    bulk.add_argument(
        "--batch", type=int, default=500, help="people per DispatchBatch call (1-1000, default 500)"
    )
    bulk.add_argument("--token-env", default="", help="environment variable holding a bearer token")

    stats = sub.add_parser("stats", help="analytics of a running sidecar: the funnel per channel (GetStats)")
    stats.add_argument("--target", default="127.0.0.1:50051", help="the sidecar, host:port")
    stats.add_argument("--days", type=int, default=7, help="the last N UTC days (default 7)")
    stats.add_argument("--since", type=date.fromisoformat, help="first UTC day, YYYY-MM-DD")
    stats.add_argument("--until", type=date.fromisoformat, help="last UTC day, YYYY-MM-DD (default today)")
    stats.add_argument(
        "--by",
        default="channel",
        help="dimensions of the rows: day,category,channel,rule,template (default channel)",
    )
    for dimension in ("category", "channel", "rule", "template"):
        stats.add_argument(f"--{dimension}", default="", help=f"only this {dimension}")
    stats.add_argument("--out", type=Path, help="also write stats.csv and stats.png here")
    stats.add_argument("--token-env", default="", help="environment variable holding a bearer token")

    replay = sub.add_parser(
        "replay", help="what-if: decide the recorded decisions again under candidate rules, and compare"
    )
    replay.add_argument("--rules", type=Path, required=True, help="the candidate rules directory")
    replay.add_argument("--baseline", type=Path, help="compare with these rules replayed the same way")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", dest="replay_store", help="the decision log in this store (redis://…)")
    source.add_argument("--log", dest="replay_log", type=Path, help="a decision log file (SD_AUDIT_LOG)")
    replay.add_argument("--since", default="24h", help="24h, 7d, or an ISO date-time (default 24h)")
    replay.add_argument("--until", help="as --since (default now)")
    replay.add_argument("--prefix", default="", help="the store's key prefix (default SD_KEY_PREFIX or sd)")
    replay.add_argument("--examples", type=int, default=3, help="example message ids per kind of change")
    replay.add_argument("--out", type=Path, help="also write replay.csv, summary.csv and replay.png here")

    health = sub.add_parser(
        "health", help="exit 0 when the sidecar reports SERVING (grpc.health.v1 over plaintext)"
    )
    health.add_argument(
        "--target", help="host:port (default 127.0.0.1 and SD_HEALTH_PORT, else SD_PORT without TLS)"
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")

    simulate = sub.add_parser(
        "simulate", help="compare policies (static, random, learned, oracle) on a simulated population"
    )
    simulate.add_argument("scenario", type=Path, help="scenario file (YAML), e.g. simulations/default.yaml")
    simulate.add_argument("--seed", type=int, default=7, help="seed of the people, messages and sampling")
    simulate.add_argument("--out", type=Path, help="write daily.csv, summary.csv and daily.png here")
    simulate.add_argument("--policies", default=",".join(("static", "random", "learned", "oracle")))
    simulate.add_argument("--store", dest="store_url", default="memory://", help="memory:// or redis://…")
    simulate.add_argument("--processes", type=int, default=2, help="policies run in parallel (default 2)")

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


def _telemetry_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--otel-exporter", help="trace exporter: otlp-grpc, otlp-http, console, none (default)"
    )
    command.add_argument(
        "--otel-endpoint", help="OTLP endpoint (default: the exporter's, or OTEL_EXPORTER_OTLP_*)"
    )
    command.add_argument(
        "--trace-sample-ratio", type=float, help="share of new traces sampled, 0..1 (default 1)"
    )
    command.add_argument(
        "--metrics-port",
        type=int,
        help="the admin HTTP port: Prometheus /metrics and the web console /console/ (default 0: off)",
    )
    command.add_argument("--audit-log", help="decision log file (JSON lines), - for stdout (default: none)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("serve", "worker"):
            return _run(args, argv)
        if args.command == "simulate":
            from smart_dispatch.simulate import simulate as run_simulation

            policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
            return run_simulation(
                args.scenario,
                seed=args.seed,
                out=args.out,
                policies=policies,
                store_url=args.store_url,
                processes=args.processes,
            )
        if args.command == "health":
            return _health(args.target, args.timeout)
        if args.command == "send":
            from smart_dispatch.bulk import send, token_from

            return send(
                args.audience,
                args.category,
                template=args.template,
                campaign=args.campaign,
                target=args.target,
                batch=args.batch,
                token=token_from(args.token_env),
            )
        if args.command == "stats":
            from smart_dispatch.bulk import token_from
            from smart_dispatch.decisionlog.report import run_stats

            return run_stats(
                target=args.target,
                days=args.days,
                since=args.since,
                until=args.until,
                group_by=[d.strip() for d in args.by.split(",") if d.strip()],
                filters={d: getattr(args, d) for d in ("category", "channel", "rule", "template")},
                out=args.out,
                token=token_from(args.token_env),
            )
        if args.command == "replay":
            from datetime import UTC, datetime

            from smart_dispatch.decisionlog.replay import parse_window, run_replay

            since, until = parse_window(args.since, args.until, datetime.now(UTC))
            return asyncio.run(
                run_replay(
                    candidate=args.rules,
                    baseline=args.baseline,
                    store_url=args.replay_store,
                    log=args.replay_log,
                    since=since,
                    until=until,
                    prefix=args.prefix or settings_from_env().key_prefix,
                    out=args.out,
                    examples=args.examples,
                )
            )
        if args.command == "why":
            return _why(args.message_id, args.log, args.json)
        if args.rules_command == "test":
            return _rules_test(args.directory, args.tests, args.require_coverage)
        return _rules_check(args.directory)
    except SmartDispatchError as exc:
        print(f"smart-dispatch: {exc}", file=sys.stderr)
        return 1


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`argv` without the given options and their values (`--opt V` or `--opt=V`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            out.append(arg)
    return out


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
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
                "otel_exporter",
                "otel_endpoint",
                "trace_sample_ratio",
                "metrics_port",
                "audit_log",
                "workers",
                "tls_cert",
                "tls_key",
                "tls_client_ca",
                "auth_tokens_file",
                "allow_request_clock",
            )
        }
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "worker":
        from smart_dispatch.worker import run_worker

        run_loop(run_worker(settings), settings.event_loop)
    elif settings.workers > 1:
        from smart_dispatch.supervisor import Supervisor

        child_args = _without(list(argv if argv is not None else sys.argv[1:])[1:], ("--workers", "--port"))
        supervisor = Supervisor(
            child_args, settings.workers, settings.host, settings.port, settings.store_url
        )
        return supervisor.run(metrics_port=settings.metrics_port)
    else:
        from smart_dispatch.app import App

        run_loop(App(settings).run_until_signal(), settings.event_loop)
    return 0


def _why(message_id: str, log: Path | None, as_json: bool) -> int:
    import json

    from smart_dispatch.telemetry.audit import find_in_log, render_why

    if log is None:
        audit_log = settings_from_env().audit_log
        if audit_log in ("", "-", "stdout"):
            print(
                "smart-dispatch why: name the decision log file with --log (or SD_AUDIT_LOG)", file=sys.stderr
            )
            return 2
        log = Path(audit_log)
    try:
        record = find_in_log(log, message_id)
    except OSError as exc:
        print(f"smart-dispatch why: cannot read {log}: {exc}", file=sys.stderr)
        return 1
    if record is None:
        print(f"smart-dispatch why: no decision for message {message_id!r} in {log}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2) if as_json else render_why(record))
    return 0


def _health(target: str | None, timeout_s: float) -> int:
    """The image's HEALTHCHECK. With TLS on, the main port needs a client certificate or trust
    roots a probe lacks, so the plaintext health port (SD_HEALTH_PORT) is probed instead."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    settings = settings_from_env()
    if target is None:
        if settings.health_port:
            target = f"127.0.0.1:{settings.health_port}"
        elif settings.tls_cert is None:
            target = f"127.0.0.1:{settings.port}"
        else:
            print("smart-dispatch health: TLS is on: set SD_HEALTH_PORT (or --target)", file=sys.stderr)
            return 2
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="smartdispatch.v1.SmartDispatchService"),
                timeout=timeout_s,
            )
        except grpc.RpcError as exc:
            print(f"smart-dispatch health: {target}: {exc.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


def _rules_check(directory: Path) -> int:
    """Validate and compile in a child process with the configured budget (rules/guard.py), so
    a hostile directory cannot hang the command; Ctrl-C stops it."""
    from smart_dispatch.rules.guard import CompileBudget, check_sources
    from smart_dispatch.rules.loader import content_version, read_sources

    settings = settings_from_env()
    sources = read_sources(directory)
    budget = CompileBudget(settings.rules_compile_timeout_s, settings.rules_compile_memory_mb)
    report = check_sources(sources, budget, str(directory))
    counts = f"{report.rules} rules, {report.caps} caps in {len(sources)} files"
    engine = f"; {report.shards} engine rulesets" if report.shards > 1 else ""
    print(f"ok: {counts}{engine}; version {content_version(sources)}")
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


EVENT_LOOPS = ("uvloop", "asyncio")


def run_loop(main: Coroutine[Any, Any, None], kind: str) -> None:
    """Run `main` on the configured event loop: `uvloop` (libuv; the default when installed) or
    `asyncio` (the standard library's)."""
    if kind not in EVENT_LOOPS:
        raise ConfigurationError(f"SD_EVENT_LOOP={kind!r}: known: {', '.join(EVENT_LOOPS)}")
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigurationError("SD_EVENT_LOOP=uvloop needs the uvloop package") from None
        uvloop.run(main)
        return
    asyncio.run(main)
