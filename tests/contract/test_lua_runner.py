"""The one Lua runner on a real redis-server: EVALSHA with reload, and concurrent calls sharing
pipelined round trips (counted by the server itself: `total_reads_processed`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from smart_dispatch._redis_guard import LuaRunner, LuaScript
from smart_dispatch.stores.redis import redis_client
from support.redis_servers import RedisServer

pytestmark = pytest.mark.redis

# KEYS[1] a counter; ARGV[1] the amount, or "boom" for a script error
INCR = LuaScript.of(
    "incr.lua",
    "if ARGV[1] == 'boom' then return redis.error_reply('boom') end "
    "return redis.call('INCRBY', KEYS[1], ARGV[1])",
)
# keeps the server busy for 0.1 s
BUSY = LuaScript.of(
    "busy.lua",
    "local t = redis.call('TIME') local stop = t[1] * 1e6 + t[2] + 100000 "
    "while true do t = redis.call('TIME') if t[1] * 1e6 + t[2] >= stop then return 1 end end",
)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = RedisServer.start_new(("--enable-debug-command", "yes"))
    yield server
    server.close()


@pytest.fixture
async def runner(server: RedisServer) -> AsyncIterator[LuaRunner]:
    with server.client() as admin:
        admin.flushall()
    client = redis_client(server.url, 2.0)
    yield LuaRunner(client, 1.0)
    await client.aclose()


def reads(server: RedisServer) -> int:
    with server.client() as admin:
        return int(admin.info("stats")["total_reads_processed"])


async def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(
    runner: LuaRunner, server: RedisServer
):
    await asyncio.gather(*(runner.run(INCR, ["warm"], [0]) for _ in range(20)))  # loaded, connected
    before = reads(server)

    replies = await asyncio.gather(*(runner.run(INCR, [f"k{i}"], [i]) for i in range(200)))

    # Each caller gets its own command's reply...
    assert replies == list(range(200))
    # ...and 200 commands took a handful of round trips, not 200 (the server counts its socket
    # reads; a few of them are this test's own INFO calls)
    assert reads(server) - before <= 20
    assert runner.direct is not None and runner.direct.commands - runner.direct.exchanges >= 190


async def test_a_script_error_answers_only_its_own_command(runner: LuaRunner):
    await runner.run(INCR, ["warm"], [0])
    results = await asyncio.gather(
        *(runner.run(INCR, ["n"], ["boom" if i == 10 else 1]) for i in range(30)), return_exceptions=True
    )
    errors = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert errors == [10] and "boom" in str(results[10])
    assert sorted(r for r in results if not isinstance(r, BaseException)) == list(range(1, 30))


async def test_a_lost_script_cache_is_reloaded_once_for_a_burst(runner: LuaRunner, server: RedisServer):
    await runner.run(INCR, ["warm"], [0])
    with server.client() as admin:
        admin.script_flush()
    loads_before = runner.round_trips

    replies = await asyncio.gather(*(runner.run(INCR, ["after-flush"], [1]) for _ in range(50)))

    assert sorted(replies) == list(range(1, 51))
    # 50 sends, one SCRIPT LOAD, a resend for each miss
    assert runner.round_trips - loads_before <= 50 + 1 + 50


async def test_a_pipeline_that_outlives_the_timeout_fails_its_callers_and_the_next_call_works(
    server: RedisServer,
):
    client = redis_client(server.url, 2.0)
    runner = LuaRunner(client, 0.2)
    try:
        direct = runner.direct
        assert direct is not None
        direct.max_inflight = 1
        await runner.run(INCR, ["slow"], [0])
        admin = server.client()
        admin.script_load(BUSY.source)  # also: the admin's connection is made
        # One exchange on the wire (a script that keeps the server busy for 0.1 s); five calls
        # queue behind it; meanwhile another client makes the server sleep for a second, so the
        # five go as one pipeline into a server that does not answer in time.
        busy = asyncio.create_task(runner.run(BUSY, [], []))
        queued = [asyncio.create_task(runner.run(INCR, ["slow"], [1])) for _ in range(5)]
        await asyncio.sleep(0.03)
        with admin:
            await asyncio.to_thread(admin.execute_command, "DEBUG", "SLEEP", "1")
        results = await asyncio.gather(busy, *queued, return_exceptions=True)

        assert results[0] == 1
        assert all(isinstance(r, TimeoutError) for r in results[1:]), results
        assert await runner.run(INCR, ["after"], [5]) == 5  # a new connection, nothing stuck
    finally:
        await client.aclose()


async def test_a_caller_that_gives_up_does_not_disturb_the_others(runner: LuaRunner):
    await runner.run(INCR, ["warm"], [0])
    calls = [asyncio.create_task(runner.run(INCR, ["c"], [1])) for _ in range(40)]
    calls[20].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(results[20], asyncio.CancelledError)
    delivered = [r for r in results if not isinstance(r, BaseException)]
    assert len(delivered) == 39 and len(set(delivered)) == 39
