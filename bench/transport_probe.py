"""A prototype, for measurement only: Decide served from a SYNC `grpc.server` (thread pool).

    .venv/bin/python bench/transport_probe.py --mode hop|lock [--store memory://]

`bench/decide.py --transport-probe` starts it twice beside the real sidecar (grpc.aio) and
measures all three in the same run. The sidecar's runtime is built exactly as `serve` builds it
(rules, stores, telemetry with the decision log), on an asyncio loop in a thread of its own;
the gRPC handler (bytes in, bytes out: parse, convert, decide, convert, serialize) then either

- `hop`:  hands the decision to that loop (`run_coroutine_threadsafe`) and waits: the rules
          engine and the stores are driven from one thread, the loop's;
- `lock`: runs the decision in the gRPC worker thread under one lock, on a loop of that
          thread's own (the engine is still driven by one thread at a time). Only for stores
          that are not bound to a loop: the memory store.

What it leaves out (why it is a probe, not a transport): interceptors (auth, telemetry spans of
the RPC), streaming methods, graceful shutdown, health.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

THREADS = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("hop", "lock"), required=True)
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--rules", type=Path, default=Path(__file__).resolve().parent.parent / "rules")
    args = parser.parse_args(argv)
    if args.mode == "lock" and not args.store.startswith("memory:"):
        raise SystemExit("--mode lock needs the memory store (a Redis client is bound to its loop)")

    import grpc
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
    from smart_dispatch.api.convert import decide_request, decide_response
    from smart_dispatch.config import Settings
    from smart_dispatch.heap import pin_malloc_thresholds
    from smart_dispatch.rules.active import ActiveRules
    from smart_dispatch.runtime import Runtime

    pin_malloc_thresholds()
    settings = Settings(rules_dir=args.rules, store_url=args.store, senders=0, watch_rules=False)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="runtime-loop", daemon=True).start()
    rules = ActiveRules.for_settings(settings)
    runtime = asyncio.run_coroutine_threadsafe(Runtime.build(settings, rules), loop).result()
    runtime.serving()
    decider = runtime.decider

    async def decide(payload: bytes) -> bytes:
        decision = await decider.decide(decide_request(pb.DecideRequest.FromString(payload)))
        return bytes(decide_response(decision).SerializeToString())

    lock = threading.Lock()
    local = threading.local()

    def hop(payload: bytes, context: Any) -> bytes:
        return asyncio.run_coroutine_threadsafe(decide(payload), loop).result()

    def locked(payload: bytes, context: Any) -> bytes:
        own = getattr(local, "loop", None)
        if own is None:
            own = local.loop = asyncio.new_event_loop()
        with lock:
            return own.run_until_complete(decide(payload))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=THREADS), options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(hop if args.mode == "hop" else locked)
    generic = grpc.method_handlers_generic_handler(
        "smartdispatch.v1.SmartDispatchService", {"Decide": handler}
    )
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"smart-dispatch listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
